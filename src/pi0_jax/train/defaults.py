"""Defaults shared by the experiment configs in configs/ (big_vision style: each is a get_config(arg) file)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Model: Pi0Config fields (see pi0_jax.model.config).
  c.model = ml_collections.ConfigDict()
  # Mesh axes as [name, size] pairs; one size may be -1 (all remaining devices).
  c.mesh = [["data", 1], ["fsdp", -1]]
  c.data_axes = ("data", "fsdp")  # The batch is split over these (FSDP is data-parallel too).
  c.fsdp_axes = ("fsdp",)  # Parameters and optimizer state are split over these.
  c.sharding_rules = [[".*", "auto"]]  # (regex over parameter paths, spec); first match wins.
  c.global_batch = 32
  c.grad_accum_steps = 1
  c.total_steps = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      peak_lr=2.5e-5, warmup_steps=1000, decay_steps=30_000, end_lr=2.5e-6, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=1e-10, clip_grad_norm=1.0, trainable="full", freeze=None, weight_decay_exclude=None))
  c.ema_decay = None  # e.g. 0.99
  # What training starts from: at most one source (pi0_jax.weights.load_init); none: a fresh init.
  c.init = ml_collections.ConfigDict(dict(paligemma_npz=None, openpi_params=None, export=None, workdir=None, ema=False))
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.keep_every = 0  # Also keep every M-th step (0: off).
  c.device_peak_flops = None  # Per device; None: a known accelerator's figure or a measured CPU matmul peak.
  c.distributed = False  # Call jax.distributed.initialize() (or set PI0_DISTRIBUTED=1).
  return c
