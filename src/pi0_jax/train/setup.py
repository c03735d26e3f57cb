"""From a config to runnable steps: mesh -> abstract state -> shardings -> jitted train and eval steps.

The trainer (pi0_jax.train.loop), the AOT compile for TPU topologies (pi0_jax.aot), offline evaluation and
the benchmarks all build their mesh and steps here, so they share one check of the mesh and batch, one
train-state layout and one jit signature.

Config fields read (see pi0_jax.train.defaults): mesh, data_axes, fsdp_axes, sharding_rules, global_batch,
grad_accum_steps, model, optimizer, ema_decay.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pi0_jax import weights
from pi0_jax.model import Observation, Pi0, Pi0Config
from pi0_jax.train import optimizer as optimizer_lib, sharding, step as step_lib


# --- Mesh ------------------------------------------------------------------------------------------------------


def resolve_layout(config, num_devices: int, *, process_count: int = 1, where: str = "") -> list[tuple[str, int]]:
  """Checks the config's mesh, data/FSDP axes and global batch against `num_devices`; returns the mesh axes.

  Touches no device (the AOT compile runs it before loading the TPU compiler). ValueError names the setting.
  """
  axes = sharding.resolve_mesh_axes(config.mesh, num_devices, where)
  data_axes, fsdp_axes = tuple(config.data_axes), tuple(config.fsdp_axes)
  sharding.check_axes(dict(axes), data_axes, fsdp_axes)
  sharding.check_batch(int(config.global_batch), dict(axes), data_axes,
                       grad_accum_steps=int(config.get("grad_accum_steps", 1)), process_count=process_count)
  return axes


def with_slices(config, slices: int):
  """`config` for `slices` TPU slices: unless its mesh already has one, a leading `slice` axis of that size,
  data parallel (FSDP stays inside each slice). A copy; `config` itself is left alone."""
  axes = sharding.parse_mesh(config.mesh)
  if slices <= 1 or sharding.SLICE_AXIS in dict(axes):
    return config
  c = config.copy_and_resolve_references()
  c.mesh = tuple([(sharding.SLICE_AXIS, int(slices))] + axes)
  c.data_axes = (sharding.SLICE_AXIS,) + tuple(config.data_axes)
  return c


def make_mesh(config, devices: Sequence[Any] | None = None) -> Mesh:
  """The config's mesh over `devices` (default: all), after resolve_layout's checks."""
  devices = list(jax.devices() if devices is None else devices)
  return sharding.make_mesh(resolve_layout(config, len(devices), process_count=jax.process_count()), devices)


def eval_mesh(mesh_axes, data_axes: Sequence[str], fsdp_axes: Sequence[str] = ()) -> Mesh:
  """A training run's mesh for evaluation; when it does not fit the devices here, all of them on the first
  data axis instead (evaluation has no optimizer state to spread)."""
  axes = sharding.parse_mesh(mesh_axes)
  sharding.check_axes(dict(axes), data_axes, fsdp_axes)
  try:
    return sharding.make_mesh(axes)
  except ValueError as e:
    fallback = [(a, -1 if a == data_axes[0] else 1) for a, _ in axes]
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning("the training mesh %s does not fit here (%s); using %s", axes, e, fallback)
    return sharding.make_mesh(fallback)


def jit_eval_step(eval_fn: Callable, mesh: Mesh):
  """eval_fn jitted for `mesh`: inputs keep their shardings, outputs come back replicated (host-readable)."""
  return jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))


# --- State and steps -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything the train step needs on one mesh; no array is allocated until `init_state`."""

  mesh: Mesh
  data_axes: tuple[str, ...]
  fsdp_axes: tuple[str, ...]
  model: Pi0  # Constrains activations to the mesh's data axes.
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  grad_accum_steps: int
  ema_decay: float | None
  frozen: dict  # Tree of bools like params: leaves the optimizer keeps fixed (optimizer.frozen_mask).
  frozen_dtype: str | None  # Storage dtype of the frozen leaves (None: as initialised, float32).
  abstract_params: dict  # ShapeDtypeStructs, unsharded.
  state_shardings: dict
  abstract_state: dict  # ShapeDtypeStructs carrying `state_shardings` (what checkpoints restore onto).

  @property
  def model_config(self) -> Pi0Config:
    return self.model.config

  @property
  def batch_sharding(self) -> NamedSharding:
    return sharding.batch_sharding(self.mesh, self.data_axes)

  @property
  def data_parallel_size(self) -> int:
    return sharding.data_parallel_size(self.mesh, self.data_axes)

  def init_state(self, rng, params: dict | None = None) -> dict:
    """A fresh state laid out on the mesh; `params` (already sharded, e.g. PaliGemma's) replace the init's."""
    init = functools.partial(step_lib.init_state, self.model, self.tx, ema=self.ema_decay is not None,
                             frozen=self.frozen, frozen_dtype=self.frozen_dtype)
    with jax.set_mesh(self.mesh):
      if params is None:
        return jax.jit(init, out_shardings=self.state_shardings)(rng)
      return jax.jit(lambda r, p: init(r, params=p), out_shardings=self.state_shardings)(rng, params)

  def train_step(self):
    """train_step(state, batch) -> (state, metrics), jitted with the state donated and metrics replicated."""
    fn = step_lib.make_train_step(self.model, self.tx, self.schedule, grad_accum_steps=self.grad_accum_steps,
                                  ema_decay=self.ema_decay, frozen=self.frozen)
    return jax.jit(fn, in_shardings=(self.state_shardings, self.batch_sharding),
                   out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())), donate_argnums=(0,))

  def abstract_batch(self, global_batch: int) -> dict:
    """The input pipeline's batch (see pi0_jax.train.step) as ShapeDtypeStructs with the batch sharding."""
    cfg, b = self.model_config, int(global_batch)
    batch = {"observation": jax.eval_shape(lambda: Observation.fake(cfg, b)),
             "actions": jax.ShapeDtypeStruct((b, cfg.action_horizon, cfg.action_dim), jnp.float32),
             "action_pad_mask": jax.ShapeDtypeStruct((b, cfg.action_horizon), jnp.bool_),
             "action_dim_mask": jax.ShapeDtypeStruct((b, cfg.action_dim), jnp.bool_)}
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding), batch)


def train_setup(config, mesh: Mesh) -> TrainSetup:
  """Model, optimizer, abstract state and shardings of `config` on `mesh` (from make_mesh)."""
  data_axes, fsdp_axes = tuple(config.data_axes), tuple(config.fsdp_axes)
  # Parameters do not depend on the activation constraint; without it, their shapes need no mesh.
  model_config = Pi0Config.from_dict(config.model.to_dict()).replace(activation_batch_axes=())
  abstract_params = weights.abstract_params(model_config)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer.to_dict(), abstract_params)
  ema_decay = config.get("ema_decay")
  frozen = optimizer_lib.frozen_mask(abstract_params, config.optimizer.to_dict())
  frozen_dtype = config.optimizer.get("frozen_dtype")
  init = functools.partial(step_lib.init_state, Pi0(model_config), tx, ema=ema_decay is not None, frozen=frozen,
                           frozen_dtype=frozen_dtype)
  abstract_state = jax.eval_shape(lambda: init(jax.random.key(0)))  # Traced, not run: nothing compiles yet.
  rules = [tuple(r) for r in config.get("sharding_rules", [(".*", "auto")])]
  state_sh = sharding.state_shardings(abstract_state, mesh, rules, fsdp_axes, tx)
  return TrainSetup(
      mesh=mesh, data_axes=data_axes, fsdp_axes=fsdp_axes,
      model=Pi0(model_config.replace(activation_batch_axes=data_axes)), tx=tx, schedule=schedule,
      grad_accum_steps=int(config.get("grad_accum_steps", 1)), ema_decay=ema_decay, frozen=frozen,
      frozen_dtype=frozen_dtype, abstract_params=abstract_params, state_shardings=state_sh,
      abstract_state=jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
                                  state_sh))
