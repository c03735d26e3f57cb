"""AdamW with warmup + cosine decay, global-norm clipping and freezing by path regex.

Defaults follow pi0's published recipe: peak lr 2.5e-5 after 1k warmup steps,
cosine decay to 2.5e-6 over 30k steps, AdamW(b1=0.9, b2=0.95, eps=1e-8,
weight decay 1e-10), clipping at global norm 1.0.

Fine-tuning trains a subset (big_vision style, regexes over '/'-joined paths): `trainable` names a preset of
TRAINABLE_PRESETS or is a regex; `freeze` is a regex of parameters to freeze besides. Frozen parameters get
zero updates (optax.set_to_zero), hold no optimizer state and count neither for clipping nor weight decay.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import optax
from flax import traverse_util

from pi0_jax.model import lora

# What trains under each fine-tuning preset (full-match regexes over parameter paths).
TRAINABLE_PRESETS: dict[str, str] = {
    "full": ".*",
    # The action expert (modules of Gemma expert 1 end in `_1`) and the pi0 heads outside PaliGemma: the state and
    # action projections and the time MLP.
    "action_expert": r"PaliGemma/llm/(.*/)?[a-z_]+_1/.*|(?!PaliGemma/).*",
    "lora": lora.PATH_REGEX,
}


def lr_schedule(cfg: Mapping[str, Any]) -> optax.Schedule:
  """cfg: peak_lr, warmup_steps, decay_steps, end_lr (all steps count optimizer updates)."""
  peak, warmup = float(cfg["peak_lr"]), int(cfg["warmup_steps"])
  decay_steps, end = int(cfg["decay_steps"]), float(cfg["end_lr"])
  if decay_steps <= warmup:
    raise ValueError(f"optimizer.decay_steps ({decay_steps}) must exceed optimizer.warmup_steps ({warmup}).")
  return optax.warmup_cosine_decay_schedule(init_value=peak / (warmup + 1), peak_value=peak, warmup_steps=warmup,
                                            decay_steps=decay_steps, end_value=end)


def path_mask(params, pattern: str | None):
  """True where the '/'-joined path fully matches `pattern` (None matches nothing)."""
  regex = re.compile(pattern) if pattern else None
  flat = traverse_util.flatten_dict(params, sep="/")
  return traverse_util.unflatten_dict({k: bool(regex and regex.fullmatch(k)) for k in flat}, sep="/")


def frozen_mask(params, cfg: Mapping[str, Any]):
  """True for each parameter that `cfg` (trainable: preset or regex; freeze: regex) keeps fixed.

  Raises ValueError when nothing would train, e.g. the "lora" preset on a model without LoRA.
  """
  trainable = cfg.get("trainable") or "full"
  pattern = TRAINABLE_PRESETS.get(trainable, trainable)
  frozen = jax.tree.map(lambda t, f: not t or f, path_mask(params, pattern), path_mask(params, cfg.get("freeze")))
  if all(jax.tree.leaves(frozen)):
    hint = " (the model has no LoRA factors: give an expert lora_rank > 0)" if trainable == "lora" else ""
    raise ValueError(f"optimizer.trainable={trainable!r} with optimizer.freeze={cfg.get('freeze')!r} leaves no "
                     f"parameter to train{hint}; presets: {sorted(TRAINABLE_PRESETS)}, or a regex over paths.")
  return frozen


def make_optimizer(cfg: Mapping[str, Any], params) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer for `params` (a tree or its abstract shapes).

  cfg: peak_lr, warmup_steps, decay_steps, end_lr, b1, b2, eps, weight_decay, clip_grad_norm,
  trainable (a TRAINABLE_PRESETS name or a regex; default all), freeze (regex over parameter paths; matched
  parameters never change), weight_decay_exclude (regex; e.g. norms and biases).
  """
  schedule = lr_schedule(cfg)
  frozen = frozen_mask(params, cfg)
  no_decay = path_mask(params, cfg.get("weight_decay_exclude"))
  decay_mask = jax.tree.map(lambda f, n: not (f or n), frozen, no_decay)
  tx = optax.chain(
      optax.clip_by_global_norm(float(cfg["clip_grad_norm"])) if cfg.get("clip_grad_norm") else optax.identity(),
      optax.scale_by_adam(b1=float(cfg["b1"]), b2=float(cfg["b2"]), eps=float(cfg["eps"])),
      optax.add_decayed_weights(float(cfg["weight_decay"]), mask=decay_mask),
      optax.scale_by_learning_rate(schedule),
  )
  if any(jax.tree.leaves(frozen)):
    labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  return tx, schedule

