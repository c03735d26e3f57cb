"""An export of a randomly initialised pi0, for serving smoke tests and benchmarks without a training run.

It goes through the real path: a train state saved by pi0_jax.train.checkpoint in a workdir with config.json,
norm statistics and a tokenizer, then `pi0_jax.export.export`, so `Policy.load` reads it like any export. The
dataset layout is Meta-World's (pi0_jax.data.specs: cameras "image" and "wrist_image", 4 state and 4 action
dims); the statistics are fixed numbers, the tokenizer is trained on `prompts`.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

DATASET = "serve_untrained"
SPEC = "metaworld_ml10_train"
PROMPTS = ("push the puck", "open the drawer", "close the window", "press the button")


def _stats(dim: int, scale: float) -> dict:
  return {"mean": [0.1 * i for i in range(dim)], "std": [scale] * dim, "q01": [-2.0 * scale] * dim,
          "q99": [2.0 * scale] * dim, "min": [-3.0 * scale] * dim, "max": [3.0 * scale] * dim, "count": 100}


def write_untrained_export(out: str, *, preset: str = "tiny", prompts: Sequence[str] = PROMPTS, seed: int = 0,
                           dtype: str = "float32", **overrides) -> str:
  """Writes the export of a freshly initialised `preset` (overrides: Pi0Config fields) to `out`; returns it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pi0_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  from pi0_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from pi0_jax.model import Observation, Pi0, get_preset  # pylint: disable=g-import-not-at-top
  from pi0_jax.train import checkpoint  # pylint: disable=g-import-not-at-top
  config = get_preset(preset, **overrides)
  model = Pi0(config)
  params = jax.jit(model.init)(jax.random.key(seed), Observation.fake(config, 1),
                               jnp.zeros((1, config.action_horizon, config.action_dim)))["params"]
  workdir = os.path.join(os.path.abspath(out) + "_workdir")
  os.makedirs(os.path.join(workdir, "assets"), exist_ok=True)
  tokenizer = os.path.join(workdir, "assets", "tokenizer.model")
  tokenizer_lib.train_tokenizer(prompts, tokenizer, vocab_size=min(64, config.vocab_size))
  with open(os.path.join(workdir, "assets", "norm_stats.json"), "w") as f:
    json.dump({"datasets": {DATASET: {"norm_stats": {"state": _stats(4, 0.5), "actions": _stats(4, 0.2)}}}}, f)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"model": config.to_dict(), "data": {"datasets": [{"name": DATASET, "spec": SPEC}],
                                                   "tokenizer": tokenizer}}, f)
  ckpts = checkpoint.Checkpoints(workdir, async_save=False)
  ckpts.save(0, {"params": params}, {"step": 0, "note": "untrained: random initialisation"})
  ckpts.close()
  return export_lib.export(workdir, out, dtype=dtype, force=True)
