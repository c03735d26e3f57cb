"""Defaults shared by the experiment configs in configs/ (big_vision style: each is a get_config(arg) file).

Every field has a type the command line can override (`--config.x=...`): optional fields are typed
placeholders (None by default), and the mesh is a tuple of (name, size) pairs, given on the command line as
`--config.mesh="(('data', 2), ('fsdp', 4))"` (configs may assign lists; ConfigDict stores them as tuples).
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections.config_dict import placeholder

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Model: Pi0Config fields (see pi0_jax.model.config).
  c.model = ml_collections.ConfigDict()
  # Mesh axes as [name, size] pairs; one size may be -1 (all remaining devices).
  c.mesh = (("data", 1), ("fsdp", -1))
  c.data_axes = ("data", "fsdp")  # The batch is split over these (FSDP is data-parallel too).
  c.fsdp_axes = ("fsdp",)  # Parameters and optimizer state are split over these.
  c.sharding_rules = [[".*", "auto"]]  # (regex over parameter paths, spec); first match wins.
  c.global_batch = 32
  c.grad_accum_steps = 1
  c.total_steps = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=2.5e-5, warmup_steps=1000, decay_steps=30_000, end_lr=2.5e-6, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-10, clip_grad_norm=1.0, trainable="full", freeze=placeholder(str),
      weight_decay_exclude=placeholder(str),
      frozen_dtype=placeholder(str)))  # e.g. "bfloat16": frozen weights stored in bf16 (fine-tuning)
  c.ema_decay = placeholder(float)  # None: no EMA; e.g. 0.99
  # What training starts from: at most one source (pi0_jax.weights.load_init); none: a fresh init.
  c.init = ml_collections.ConfigDict(dict(paligemma_npz=placeholder(str), openpi_params=placeholder(str),
                                          export=placeholder(str), workdir=placeholder(str), ema=False))
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.keep_every = 0  # Also keep every M-th step (0: off).
  # Per device; None: a known accelerator's figure or a measured CPU matmul peak.
  c.device_peak_flops = placeholder(float)
  c.distributed = False  # Call jax.distributed.initialize() (or set PI0_DISTRIBUTED=1).
  # How hosts agree to stop after a SIGTERM (pi0_jax.train.preemption): "auto" (JAX's preemption sync point on
  # TPU, an all-reduce of the local flags every log_every steps elsewhere), "sync_point" or "allreduce".
  c.preemption_sync = "auto"
  return c


def data_config(**fields) -> ml_collections.ConfigDict:
  """`config.data`: `fields` over every scalar default of pi0_jax.data.config.DataSettings.

  So that each data option (e.g. `--config.data.skip_bad_episodes=True`) exists, with its type, in every config;
  options whose default is None become typed placeholders, and `seed` is None (the experiment's seed).
  """
  from pi0_jax.data.config import DataSettings  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(DataSettings):
    if f.default is dataclasses.MISSING or dataclasses.is_dataclass(f.default):
      continue  # Resolved from the model config, or a nested dataclass (augment_params).
    kind = _TYPES[str(f.type).split(" |")[0]]
    c[f.name] = placeholder(kind) if f.default is None or f.name == "seed" else f.default
  c.update(fields)
  return c
