"""Throughput of the whole input pipeline: read, chunk, mix, shuffle, decode + resize + augment, batch.

Samples/s that `pi0_jax.data.pipeline` delivers as host batches (tokenised, ready for
`make_global_batch`), 2 cameras at --resolution, with and without augmentation and for several
decode parallelisms. Compare with the samples/s one train step consumes.

  python benchmarks/data.py --dataset_dir=data/metaworld/metaworld_ml10_train/1.0.0 --out=benchmarks/results/data.json

Without --dataset_dir a synthetic Meta-World-shaped dataset (PNG frames at --synthetic_image_size) is
written to a temporary directory first. Without --tokenizer prompts are tokenised by a byte-level stand-in
(the real tokenizer caches per distinct prompt, so its cost is negligible either way).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_DIR = flags.DEFINE_string("dataset_dir", None, "Prepared TFDS dataset directory (.../<name>/<version>).")
_SPEC = flags.DEFINE_string("spec", "metaworld_ml10_train", "Entry of pi0_jax.data.specs.DATASETS to use.")
_PRESET = flags.DEFINE_string("preset", "demo", "Pi0Config preset (camera slots, horizon, action_dim).")
_RES = flags.DEFINE_integer("resolution", 224, "Model image resolution.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size (one process).")
_BATCHES = flags.DEFINE_integer("num_batches", 30, "Timed batches per configuration.")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Batches before timing (fills the shuffle buffer and prefetch).")
_PARALLEL = flags.DEFINE_list("num_parallel_calls", ["1", "2"], "Decode/augment parallelism values to try.")
_AUGMENT = flags.DEFINE_list("augment", ["false", "true"], "Augmentation settings to try.")
_SHUFFLE = flags.DEFINE_integer("shuffle_buffer", 1000, "Shuffle buffer (frames, encoded).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Sentencepiece model; default: a byte-level stand-in.")
_SYNTH_SIZE = flags.DEFINE_integer("synthetic_image_size", 224, "Frame size of the synthetic dataset.")
_SYNTH_EPISODES = flags.DEFINE_integer("synthetic_episodes", 8, "Episodes of the synthetic dataset.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/data.json", "JSON output ('' to skip).")


def byte_tokenizer(max_len: int):
  import numpy as np

  def tokenize(prompt: str):
    ids = [2] + [b + 3 for b in prompt.encode()][: max_len - 1]
    tokens = np.zeros(max_len, np.int32)
    tokens[: len(ids)] = ids
    return tokens, np.arange(max_len) < len(ids)
  return tokenize


def synthetic_dataset(root: str, size: int, episodes: int) -> str:
  from pi0_jax.data import synthetic
  eps = [synthetic.episode(60, seed=i, image_size=size, instruction=f"task {i % 4}") for i in range(episodes)]
  return synthetic.write_rlds(root, "pi0_benchmark_synthetic", {"train": eps})


def bench(dataset_dir: str, stats_dir: str, augment: bool, parallel: int) -> dict:
  import ml_collections
  from pi0_jax.data import pipeline
  from pi0_jax.model.config import get_preset
  config = get_preset(_PRESET.value, image_resolution=_RES.value)
  data_config = ml_collections.ConfigDict(dict(
      datasets=[dict(name="bench", dir=dataset_dir, spec=_SPEC.value)], shuffle_buffer=_SHUFFLE.value,
      augment=augment, num_parallel_calls=parallel, stats_dir=stats_dir, tokenizer=_TOKENIZER.value,
      min_episode_length=1))
  t0 = time.perf_counter()
  data = pipeline.make_train_data(data_config, config, global_batch=_BATCH.value, seed=0,
                                  tokenize_fn=None if _TOKENIZER.value else byte_tokenizer(config.max_token_len))
  build_s = time.perf_counter() - t0
  for _ in range(_WARMUP.value):
    data.next_host_batch()
  t0 = time.perf_counter()
  for _ in range(_BATCHES.value):
    data.next_host_batch()
  dt = time.perf_counter() - t0
  return {"cameras": sum(1 for k in config.image_keys if dict(data.plans[0].spec.cameras).get(k)),
          "resolution": config.image_resolution, "augment": augment, "parallel_calls": parallel,
          "batch": _BATCH.value, "samples_per_s": _BATCH.value * _BATCHES.value / dt,
          "ms_per_batch": dt / _BATCHES.value * 1e3, "build_s": build_s,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv):
  del argv
  import common
  with tempfile.TemporaryDirectory() as tmp:
    dataset_dir = _DIR.value or synthetic_dataset(tmp, _SYNTH_SIZE.value, _SYNTH_EPISODES.value)
    rows = [bench(dataset_dir, os.path.join(tmp, "stats"), a.lower() == "true", int(p))
            for a in _AUGMENT.value for p in _PARALLEL.value]
  common.print_table(rows, ["cameras", "resolution", "augment", "parallel_calls", "batch", "samples_per_s",
                            "ms_per_batch", "build_s", "peak_rss_mb"])
  common.write_json(_OUT.value, {"benchmark": "data", "machine": common.machine(),
                                 "dataset_dir": _DIR.value or "synthetic", "shuffle_buffer": _SHUFFLE.value,
                                 "rows": rows})


if __name__ == "__main__":
  app.run(main)
