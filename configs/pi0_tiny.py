"""A tiny pi0 (the "tiny" preset: a few thousand parameters, float32) for tests and smoke runs on any CPU.

  python -m pi0_jax.train --config=configs/pi0_tiny.py:dataset=/data/mw/metaworld_ml10_train/1.0.0,\
tokenizer=/data/mw/tokenizer.model --workdir=/tmp/tiny

arg: comma-separated key=value: dataset (a prepared TFDS directory), name (the dataset's name in reports;
default: taken from the directory), spec (which standardisation spec reads it; default metaworld_ml10_train),
tokenizer (a sentencepiece model), steps (default 20).
"""

import os

import ml_collections

from pi0_jax.model.config import get_preset
from pi0_jax.train import defaults


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  c = defaults.base_config()
  c.model = ml_collections.ConfigDict(get_preset("tiny").to_dict())
  c.mesh = [["data", -1], ["fsdp", 1]]
  c.global_batch = 8
  c.total_steps = int(args.get("steps", 20))
  c.optimizer.update(peak_lr=1e-3, warmup_steps=min(2, c.total_steps - 1), decay_steps=c.total_steps, end_lr=1e-4)
  c.log_every = 1
  c.checkpoint_every = 5
  dataset = args.get("dataset", "")
  name = args.get("name") or (os.path.basename(os.path.dirname(dataset.rstrip("/"))) if dataset else "dataset")
  c.data = defaults.data_config(
      datasets=[dict(name=name, dir=dataset, spec=args.get("spec", "metaworld_ml10_train"))],
      shuffle_buffer=64, augment=True, num_parallel_calls=1, prefetch_batches=1,
      tokenizer=args.get("tokenizer"), stats_dir=args.get("stats_dir"), host_split="episodes")
  return c
