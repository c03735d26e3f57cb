"""LoRA adapters on the Gemma projections, in openpi's layout, and merging them into the base weights.

A projection `y = einsum(eqn, x, w)` with `w` of shape [..., I, O] gains two factors named as openpi names them:
`lora_a` [..., I, r] and `lora_b` [..., r, O] (`<name>_lora_a` / `<name>_lora_b` beside the MLP's bare
`gating_einsum` and `linear`), and becomes `y + scale * einsum(eqn_b, einsum(eqn_a, x, lora_a), lora_b)`, where
eqn_a / eqn_b are `eqn` with the output (resp. input) axis of `w` renamed to the rank axis. Both factors start
from normal(0.01), as in openpi, so an adapted model differs from its base from the first step.

openpi's gemma_2b_lora uses rank 16 and gemma_300m_lora rank 32, both with alpha = rank: scale 1. (openpi applies
no scale to the MLP adapters; with alpha = rank the two agree. Here every adapter is scaled.)

Merging folds `scale * (lora_a @ lora_b)` into `w` (computed in float32) and drops the factors, giving the tree of
the same model without LoRA: what an export writes, so a policy runs the plain model.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from typing import Any, Mapping

import jax.numpy as jnp
import flax.linen as nn
import numpy as np

# Both factors of openpi's LoRAConfig default init.
INIT = nn.initializers.normal(stddev=0.01)
RANK_LABEL = "L"
# Matches every LoRA leaf of the pi0 tree ('/'-joined paths): Einsum's `lora_a`/`lora_b`, the MLP's `*_lora_[ab]`.
PATH_REGEX = r".*lora_[ab]$"
_FACTOR = re.compile(r"^(?:(?P<prefix>.+)_)?lora_(?P<which>[ab])$")
_EXPERT = re.compile(r"_([1-9][0-9]*)$")


def scale(cfg) -> float:
  """The factor on the adapter output for a GemmaConfig: alpha / rank, or alpha / sqrt(rank) with rslora."""
  return cfg.lora_alpha / (math.sqrt(cfg.lora_rank) if cfg.lora_rslora else cfg.lora_rank)


def factor_shapes(shape: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Shapes of (lora_a, lora_b) for a weight of `shape` [..., I, O]: [..., I, r] and [..., r, O]."""
  return (*shape[:-1], rank), (*shape[:-2], rank, shape[-1])


def _split(eqn: str) -> tuple[str, str, str]:
  m = re.fullmatch(r"(\w+),(\w+)->(\w+)", eqn)
  if not m or RANK_LABEL in eqn:
    raise ValueError(f"LoRA needs an einsum 'x,w->y' without the label {RANK_LABEL!r}, got {eqn!r}.")
  return m.groups()


def factor_eqns(eqn: str) -> tuple[str, str]:
  """(x, lora_a -> h) and (h, lora_b -> y) for the projection `eqn` (openpi's construction)."""
  lhs, rhs, out = _split(eqn)
  in_label, out_label = rhs[-2], rhs[-1]
  a_rhs, hidden = rhs.replace(out_label, RANK_LABEL), out.replace(out_label, RANK_LABEL)
  return f"{lhs},{a_rhs}->{hidden}", f"{hidden},{rhs.replace(in_label, RANK_LABEL)}->{out}"


def apply(eqn: str, x, a, b, factor: float):
  """The adapter's contribution to `einsum(eqn, x, w)`, in x's dtype."""
  eqn_a, eqn_b = factor_eqns(eqn)
  return jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a.astype(x.dtype)), b.astype(x.dtype)) * factor


def delta(eqn: str, a, b, factor: float):
  """The weight update W such that einsum(eqn, x, W) == apply(eqn, x, a, b, factor) for every x.

  Axes of `w` the hidden activation keeps (q's heads, kv's 2 and K) pair a with b; an axis that eqn_a sums
  away (the heads of attn_vec_einsum) is summed in b on its own. Leading axes beyond `eqn`'s (the layer
  axis of scanned blocks) are batch axes. Computed in float32.
  """
  lhs, rhs, out = _split(eqn)
  hidden = factor_eqns(eqn)[0].split("->")[1]
  free = iter(c for c in string.ascii_uppercase if c not in lhs + rhs + out + RANK_LABEL)
  a_rhs, b_rhs = rhs.replace(rhs[-1], RANK_LABEL), rhs.replace(rhs[-2], RANK_LABEL)
  b_rhs = "".join(c if c in hidden or c in out or c == RANK_LABEL else next(free) for c in b_rhs)
  lead = "".join(next(free) for _ in range(a.ndim - len(rhs)))
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  return jnp.einsum(f"{lead}{a_rhs},{lead}{b_rhs}->{lead}{rhs}", a, b) * factor


def has_lora(config) -> bool:
  """Whether a Pi0Config adapts either expert."""
  return any(cfg.lora_rank for cfg in config.gemma_configs)


def without_lora(config):
  """The Pi0Config of the same model with its adapters merged: openpi's `*_lora` variant names lose the suffix."""
  from pi0_jax.model.config import GEMMA_VARIANTS  # pylint: disable=g-import-not-at-top
  changes = {}
  for field, cfg in zip(("paligemma_variant", "action_expert_variant"), config.gemma_configs):
    name = getattr(config, field)
    if isinstance(name, str) and name.endswith("_lora") and GEMMA_VARIANTS.get(name[:-5]) == dataclasses.replace(
        cfg, lora_rank=0, lora_alpha=1.0, lora_rslora=False):
      changes[field] = name[:-5]
    elif cfg.lora_rank:
      changes[field] = dataclasses.replace(cfg, lora_rank=0, lora_alpha=1.0, lora_rslora=False)
  return config.replace(**changes)


def merge_params(params: Mapping[str, Any], config) -> dict:
  """The params of `without_lora(config)`: every adapter folded into its weight, the factors dropped.

  `params`: the nested tree of a Pi0 built from `config` (numpy or jax arrays). Merged weights keep their dtype.
  """
  from pi0_jax import weights  # pylint: disable=g-import-not-at-top
  from pi0_jax.model.gemma import PROJECTION_EQNS  # pylint: disable=g-import-not-at-top
  flat = dict(weights.flatten(params))
  configs = config.gemma_configs
  for path in [p for p in flat if re.fullmatch(PATH_REGEX, p) and p.endswith("a")]:
    module, leaf = path.rsplit("/", 1)
    prefix = _FACTOR.match(leaf).group("prefix")
    module_name = module.rsplit("/", 1)[1]  # q_einsum_1 / mlp_1: the expert's suffix is on the module.
    expert = _EXPERT.search(module_name)
    cfg = configs[int(expert.group(1)) if expert else 0]
    w_path, eqn = (f"{module}/{prefix}", PROJECTION_EQNS[prefix]) if prefix else (
        f"{module}/w", PROJECTION_EQNS[_EXPERT.sub("", module_name)])
    w = flat[w_path]
    update = delta(eqn, flat.pop(path), flat.pop(path[:-1] + "b"), scale(cfg))
    flat[w_path] = np.asarray(jnp.asarray(w, jnp.float32) + update).astype(w.dtype)
  return weights.unflatten(flat)
