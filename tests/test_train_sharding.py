"""Mesh, sharding rules, and the sharded train step against a single-device run."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pi0_jax.model import Pi0
from pi0_jax.train import optimizer, sharding, step

import model_utils

# eps 1e-2, not 1e-8: some gradients are zero up to rounding (SigLIP's key bias cancels in the softmax), and
# Adam's m / sqrt(v) would blow their reduction-order noise up to whole learning-rate steps. With a large
# eps, small gradients move parameters in proportion, and sharded vs unsharded compares the computation.
OPT = dict(peak_lr=1e-3, warmup_steps=2, decay_steps=20, end_lr=1e-4, b1=0.9, b2=0.95, eps=1e-2, weight_decay=1e-4,
           clip_grad_norm=1.0)


def test_make_mesh_sizes_and_errors():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", -1)])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
  assert dict(sharding.make_mesh("data:1,fsdp:-1").shape) == {"data": 1, "fsdp": 8}
  with pytest.raises(ValueError, match="need 16 devices, but only 8 are available"):
    sharding.make_mesh([("data", 2), ("fsdp", 8)])
  with pytest.raises(ValueError, match="at most one size may be -1"):
    sharding.make_mesh([("data", -1), ("fsdp", -1)])
  with pytest.raises(ValueError, match="8 devices are not a multiple of 3"):
    sharding.make_mesh([("data", 3), ("fsdp", -1)])
  with pytest.raises(ValueError, match="use 4 of 8 devices"):
    sharding.make_mesh([("data", 2), ("fsdp", 2)])


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_batch=12), "global_batch=12 is not divisible by the data-parallel size 8"),
    (dict(global_batch=8, grad_accum_steps=2), "grad_accum_steps=2 micro-batches"),
    (dict(global_batch=8, process_count=3), "not divisible by the process count 3"),
    (dict(global_batch=8, grad_accum_steps=0), "grad_accum_steps must be >= 1"),
    (dict(global_batch=8, data_axes=("data", "model")), "data_axes names 'model'"),
])
def test_check_batch_names_the_setting(kwargs, message):
  args = dict(mesh_shape={"data": 2, "fsdp": 4}, data_axes=("data", "fsdp")) | kwargs
  with pytest.raises(ValueError, match=message):
    sharding.check_batch(**args)
  sharding.check_batch(16, {"data": 2, "fsdp": 4}, ("data", "fsdp"), grad_accum_steps=2, process_count=2)


def test_auto_fsdp_spreads_axes_over_indivisible_dimensions():
  devices = np.array(jax.devices() * 32)  # 256 entries: only the mesh shape matters here
  mesh = jax.sharding.Mesh(devices.reshape(1, 16, 16), ("data", "fsdp", "fsdp2"))
  # SigLIP's MLP kernel: 256 divides none of 27, 1152, 4304; a factored 16 x 16 FSDP mesh splits two of them.
  spec = sharding.auto_fsdp_spec((27, 1152, 4304), mesh, ("fsdp", "fsdp2"))
  assert spec == P(None, "fsdp2", "fsdp")
  # Gemma's MLP: both axes can go to the large dimension or the next.
  spec = sharding.auto_fsdp_spec((18, 2, 2048, 16384), mesh, ("fsdp", "fsdp2"))
  assert spec == P(None, None, "fsdp2", "fsdp")
  # Small arrays stay replicated.
  assert sharding.auto_fsdp_spec((1152,), mesh, ("fsdp", "fsdp2")) == P()
  flat_mesh = jax.sharding.Mesh(devices.reshape(1, 256), ("data", "fsdp"))
  assert sharding.auto_fsdp_spec((27, 1152, 4304), flat_mesh, ("fsdp",)) == P()
  # 257,152 = 2^7 x 2009: the embedding splits along its width instead.
  assert sharding.auto_fsdp_spec((257152, 2048), flat_mesh, ("fsdp",)) == P(None, "fsdp")


def test_rules_first_match_wins_and_validate():
  mesh = sharding.make_mesh([("data", 2), ("fsdp", 4)])
  tree = {"a": {"kernel": jnp.zeros((64, 512))}, "b": {"bias": jnp.zeros((512,))}}
  specs = sharding.param_specs(tree, mesh, [(".*/bias", None), (".*", ("data", "fsdp"))], ("fsdp",))
  assert specs == {"a": {"kernel": P("data", "fsdp")}, "b": {"bias": P()}}
  with pytest.raises(ValueError, match="not divisible"):
    sharding.param_specs({"x": jnp.zeros((3, 8))}, mesh, [(".*", ("fsdp", None))], ("fsdp",))
  with pytest.raises(ValueError, match="names mesh axis 'model'"):
    sharding.param_specs({"x": jnp.zeros((8, 8))}, mesh, [(".*", ("model", None))], ("fsdp",))


def _batch(cfg, b=8, seed=0):
  rng = np.random.default_rng(seed)
  obs = model_utils.random_observation(cfg, batch_size=b, seed=seed, prompt_lengths=[6 - i % 4 for i in range(b)])
  pad = np.ones((b, cfg.action_horizon), bool)
  pad[::3, -2:] = False
  dim = np.ones((b, cfg.action_dim), bool)
  dim[:, 6:] = False
  return {"observation": obs, "actions": jnp.asarray(rng.uniform(-1, 1, (b, cfg.action_horizon, cfg.action_dim)),
                                                      jnp.float32),
          "action_pad_mask": jnp.asarray(pad), "action_dim_mask": jnp.asarray(dim)}


def _run(mesh_axes, cfg, batches, data_axes=("data", "fsdp"), ema=0.9):
  """Two train steps, sharded over `mesh_axes` (None: one device, no mesh)."""
  devices = jax.devices()[:1] if mesh_axes is None else jax.devices()
  mesh = sharding.make_mesh(mesh_axes or [("data", 1), ("fsdp", 1)], devices)
  cfg = cfg.replace(activation_batch_axes=data_axes)
  model = Pi0(cfg)
  params = jax.device_get(model_utils.init_params(cfg.replace(activation_batch_axes=()))["params"])  # donated below
  tx, schedule = optimizer.make_optimizer(OPT, params)
  state = step.init_state(model, tx, jax.random.key(3), ema=True, params=params)
  abstract = jax.eval_shape(lambda s: s, state)
  shardings = sharding.state_shardings(abstract, mesh, [(".*", "auto")], ("fsdp",), tx)
  state = jax.device_put(state, shardings)
  bsh = sharding.batch_sharding(mesh, data_axes)
  train_step = jax.jit(step.make_train_step(model, tx, schedule, ema_decay=ema), in_shardings=(shardings, bsh),
                       out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=(0,))
  losses = []
  with jax.set_mesh(mesh):
    for batch in batches:
      state, metrics = train_step(state, jax.device_put(batch, bsh))
      losses.append(float(metrics["loss"]))
  return state, losses, shardings


@pytest.fixture(scope="module")
def single_device_run():
  cfg = model_utils.tiny_config()
  batches = [_batch(cfg, seed=0), _batch(cfg, seed=1)]
  state, losses, _ = _run(None, cfg, batches)
  return cfg, batches, jax.device_get(state), losses


@pytest.mark.parametrize("mesh_axes", [[("data", 8), ("fsdp", 1)], [("data", 2), ("fsdp", 4)], [("data", 1), ("fsdp", 8)]])
def test_sharded_step_equals_single_device(single_device_run, mesh_axes):
  cfg, batches, ref_state, ref_losses = single_device_run
  state, losses, shardings = _run(mesh_axes, cfg, batches)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # Parameters really are sharded where the fsdp axis is > 1.
  kernel = state["params"]["PaliGemma"]["llm"]["layers"]["mlp"]["gating_einsum"]
  fsdp = dict(shardings["params"]["PaliGemma"]["llm"]["layers"]["mlp"]["gating_einsum"].mesh.shape)["fsdp"]
  assert len({str(s.index) for s in kernel.addressable_shards}) == fsdp
  state = jax.device_get(state)
  for key in ("params", "ema_params"):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state[key]), jax.tree.leaves(ref_state[key])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f"{key}{path}")
  assert int(state["step"]) == 2
  assert np.isfinite(losses).all() and losses[0] > 0  # The loss's value and decrease: tests/test_train_step.py.
