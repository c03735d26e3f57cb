"""Throughput of the whole input pipeline: read, chunk, mix, shuffle, decode + resize + augment, batch.

Samples/s that `pi0_jax.data.pipeline` delivers as host batches (tokenised, ready for
`make_global_batch`) at --resolution, with and without augmentation and for several decode parallelisms,
and samples per CPU-second of the whole process (its user + system time, all tf.data threads): the rate
per core, which other load on the machine disturbs less than wall time. Compare with the samples/s one
train step consumes.

  python benchmarks/data.py --dataset_dir=data/metaworld/metaworld_ml10_train/1.0.0 --out=benchmarks/results/data.json
  python benchmarks/data.py --fixture=oxe --augment=true --num_parallel_calls=2 --out=benchmarks/results/data_oxe.json
  python benchmarks/data.py --fixture=oxe --measure_state --state_buffer=2000 --out=benchmarks/results/data_state.json

Without --dataset_dir a synthetic dataset (PNG frames at --synthetic_image_size) is written to a temporary
directory first: --fixture=metaworld (2 cameras, 4-d state and actions) or --fixture=oxe (DROID's layout:
two exterior cameras and a wrist camera, float64 state and an action dict, all three cameras fed through an
inline spec). Without --tokenizer prompts are tokenised by a byte-level stand-in (the real tokenizer caches
per distinct prompt, so its cost is negligible either way).

--measure_state compares the two data positions a checkpoint can hold, per process, with a shuffle buffer
of --state_buffer frames: iterator_state="checkpoint" (the tf.data iterator with its buffer: bytes on
disk, and per buffered frame) against the default "replay" (the JSON position: bytes; and the restore's
cost: frames skipped per CPU-second, from restoring after --state_skip_batches batches against after none).
"""

from __future__ import annotations

import json
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
_FIXTURE = flags.DEFINE_enum("fixture", "metaworld", ["metaworld", "oxe"], "Synthetic dataset layout.")
_MEASURE_STATE = flags.DEFINE_bool("measure_state", False, "Measure the data position's size instead of the rate.")
_STATE_BUFFER = flags.DEFINE_integer("state_buffer", 2000, "Shuffle buffer (frames) for --measure_state.")
_STATE_SKIP = flags.DEFINE_integer("state_skip_batches", 100, "Batches a replay restore skips (--measure_state).")
_NOTE = flags.DEFINE_string("note", "", "Free text stored in the JSON (e.g. other load on the machine).")
_ROW_OUT = flags.DEFINE_string("row_out", None, "Internal: measure the one configuration given and write its row "
                               "here (each configuration runs in a fresh process, so its peak RSS is its own).")

# DROID-shaped: both exterior cameras and the wrist camera fill pi0's three slots; no transform needed.
OXE_SPEC = dict(cameras={"base_0_rgb": "exterior_image_1_left", "left_wrist_0_rgb": "wrist_image_left",
                         "right_wrist_0_rgb": "exterior_image_2_left"},
                state_keys=["cartesian_position", "gripper_position"], action_key="action",
                instruction_key="language_instruction", unnormalized_action_dims=[6])
_OUT = flags.DEFINE_string("out", "benchmarks/results/data.json", "JSON output ('' to skip).")


def byte_tokenizer(max_len: int):
  import numpy as np

  def tokenize(prompt: str):
    ids = [2] + [b + 3 for b in prompt.encode()][: max_len - 1]
    tokens = np.zeros(max_len, np.int32)
    tokens[: len(ids)] = ids
    return tokens, np.arange(max_len) < len(ids)
  return tokenize


def _oxe_episode(length: int, seed: int, size: int) -> dict:
  """DROID's step layout (names, ranks, dtypes) with synthetic content."""
  import numpy as np
  from pi0_jax.data import synthetic
  views = [synthetic.episode(length, seed=seed * 3 + k, image_size=size, wrist=False) for k in range(3)]
  rng = np.random.default_rng(seed)
  f64 = lambda *shape: rng.normal(size=(length, *shape))  # noqa: E731
  return {"observation": {"exterior_image_1_left": views[0]["observation"]["image"],
                          "exterior_image_2_left": views[1]["observation"]["image"],
                          "wrist_image_left": views[2]["observation"]["image"], "cartesian_position": f64(6),
                          "gripper_position": rng.random((length, 1)), "joint_position": f64(7)},
          "action": np.concatenate([f64(6), rng.random((length, 1))], -1),
          "action_dict": {"cartesian_velocity": f64(6), "gripper_position": rng.random((length, 1))},
          "language_instruction": f"task {seed % 4}"}


def synthetic_dataset(root: str, size: int, episodes: int) -> str:
  from pi0_jax.data import synthetic
  if _FIXTURE.value == "oxe":
    eps = [_oxe_episode(60, i, size) for i in range(episodes)]
  else:
    eps = [synthetic.episode(60, seed=i, image_size=size, instruction=f"task {i % 4}") for i in range(episodes)]
  return synthetic.write_rlds(root, f"pi0_benchmark_{_FIXTURE.value}", {"train": eps})


def make_data(dataset_dir: str, stats_dir: str, augment: bool, parallel: int, **overrides):
  import ml_collections
  from pi0_jax.data import pipeline
  from pi0_jax.model.config import get_preset
  oxe = _FIXTURE.value == "oxe"
  config = get_preset("pi0" if oxe else _PRESET.value, image_resolution=_RES.value)
  data_config = ml_collections.ConfigDict({**dict(
      datasets=[dict(name="bench", dir=dataset_dir, spec=OXE_SPEC if oxe else _SPEC.value)],
      shuffle_buffer=_SHUFFLE.value, augment=augment, num_parallel_calls=parallel, stats_dir=stats_dir,
      tokenizer=_TOKENIZER.value, min_episode_length=1), **overrides})
  return config, pipeline.make_train_data(
      data_config, config, global_batch=_BATCH.value, seed=0,
      tokenize_fn=None if _TOKENIZER.value else byte_tokenizer(config.max_token_len))


def _cpu_s() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def bench(dataset_dir: str, stats_dir: str, augment: bool, parallel: int) -> dict:
  t0 = time.perf_counter()
  config, data = make_data(dataset_dir, stats_dir, augment, parallel)
  build_s = time.perf_counter() - t0
  for _ in range(_WARMUP.value):
    data.next_host_batch()
  t0, cpu0 = time.perf_counter(), _cpu_s()
  for _ in range(_BATCHES.value):
    data.next_host_batch()
  dt, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
  samples = _BATCH.value * _BATCHES.value
  return {"cameras": sum(1 for k in config.image_keys if dict(data.plans[0].spec.cameras).get(k)),
          "resolution": config.image_resolution, "augment": augment, "parallel_calls": parallel,
          "batch": _BATCH.value, "samples_per_s": samples / dt, "samples_per_cpu_s": samples / cpu,
          "cpu_cores_busy": cpu / dt, "ms_per_batch": dt / _BATCHES.value * 1e3, "build_s": build_s,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def measure_state(dataset_dir: str, tmp: str) -> dict:
  """Bytes of one process's data position in each mode, and the replay restore's skip rate."""
  stats_dir = os.path.join(tmp, "stats")
  out = {"shuffle_buffer": _STATE_BUFFER.value, "batch": _BATCH.value}
  for mode in ("checkpoint", "replay"):
    workdir = os.path.join(tmp, mode)
    _, data = make_data(dataset_dir, stats_dir, False, 2, iterator_state=mode, shuffle_buffer=_STATE_BUFFER.value)
    data.state_root = os.path.join(workdir, "data_state")
    data.next_host_batch()  # The first batch fills the whole buffer.
    t0 = time.perf_counter()
    state = data.state()
    out[mode] = {"write_s": time.perf_counter() - t0, "json_bytes": len(json.dumps(state)),
                 "disk_bytes": _dir_bytes(workdir) if os.path.isdir(workdir) else 0}
  out["checkpoint"]["bytes_per_buffered_frame"] = out["checkpoint"]["disk_bytes"] / _STATE_BUFFER.value
  out["checkpoint"]["extrapolated_gb_at_250k_frames"] = out["checkpoint"]["bytes_per_buffered_frame"] * 250_000 / 1e9
  wall, cpu = {}, {}
  for batches in (_STATE_SKIP.value, 0):  # The skipping restore first: one-time costs count against it.
    _, fresh = make_data(dataset_dir, stats_dir, False, 2, iterator_state="replay",
                         shuffle_buffer=_STATE_BUFFER.value)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    fresh.restore({"batches": batches, "mode": "replay", "fingerprint": fresh.state()["fingerprint"]})
    fresh.next_host_batch()
    wall[batches], cpu[batches] = time.perf_counter() - t0, _cpu_s() - cpu0
  skipped = _STATE_SKIP.value * _BATCH.value
  out["replay"].update(restore_skip_frames=skipped, restore_s=wall[_STATE_SKIP.value], restore_s_without_skip=wall[0],
                       restore_cpu_s=cpu[_STATE_SKIP.value], restore_cpu_s_without_skip=cpu[0],
                       skip_frames_per_cpu_s=skipped / max(cpu[_STATE_SKIP.value] - cpu[0], 1e-9))
  return out


def _row_in_fresh_process(dataset_dir: str, tmp: str, augment: str, parallel: str) -> dict:
  import subprocess
  out = os.path.join(tmp, f"row_{augment}_{parallel}.json")
  subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--dataset_dir={dataset_dir}",
                  f"--augment={augment}", f"--num_parallel_calls={parallel}", f"--row_out={out}", "--out="],
                 check=True)
  with open(out) as f:
    return json.load(f)


def main(argv):
  del argv
  import common
  meta = {"machine": common.machine(), "dataset_dir": _DIR.value or f"synthetic {_FIXTURE.value}",
          "image_encoding": "png" if not _DIR.value else "as stored", "note": _NOTE.value,
          "load_average_at_start": os.getloadavg()}
  with tempfile.TemporaryDirectory() as tmp:
    dataset_dir = _DIR.value or synthetic_dataset(tmp, _SYNTH_SIZE.value, _SYNTH_EPISODES.value)
    if _MEASURE_STATE.value:
      result = measure_state(dataset_dir, tmp)
      print(json.dumps(result, indent=1))
      common.write_json(_OUT.value, {"benchmark": "data_state", **meta, **result})
      return
    if _ROW_OUT.value:
      row = bench(dataset_dir, os.path.join(tmp, "stats"), _AUGMENT.value[0].lower() == "true",
                  int(_PARALLEL.value[0]))
      common.write_json(_ROW_OUT.value, row)
      return
    rows = [_row_in_fresh_process(dataset_dir, tmp, a, p) for a in _AUGMENT.value for p in _PARALLEL.value]
  common.print_table(rows, ["cameras", "resolution", "augment", "parallel_calls", "batch", "samples_per_s",
                            "samples_per_cpu_s", "cpu_cores_busy", "ms_per_batch", "build_s", "peak_rss_mb"])
  common.write_json(_OUT.value, {"benchmark": "data", **meta, "shuffle_buffer": _SHUFFLE.value,
                                 "load_average_at_end": os.getloadavg(), "rows": rows})


if __name__ == "__main__":
  app.run(main)
