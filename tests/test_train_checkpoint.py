"""Orbax checkpoints of the sharded train state: restore onto other meshes and device counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pi0_jax.model import Pi0
from pi0_jax.train import checkpoint, optimizer, sharding, step

import model_utils

OPT = dict(peak_lr=1e-3, warmup_steps=2, decay_steps=20, end_lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-4,
           clip_grad_norm=1.0)


def _state_and_shardings(mesh_axes, devices):
  cfg = model_utils.tiny_config()
  model = Pi0(cfg)
  params = jax.device_get(model_utils.init_params(cfg)["params"])
  tx, _ = optimizer.make_optimizer(OPT, params)
  state = step.init_state(model, tx, jax.random.key(0), ema=True, params=params)
  mesh = sharding.make_mesh(mesh_axes, devices)
  shardings = sharding.state_shardings(jax.eval_shape(lambda s: s, state), mesh, [(".*", "auto")], ("fsdp",), tx)
  return jax.device_put(state, shardings), shardings


def test_restore_onto_other_device_counts(tmp_path):
  state8, _ = _state_and_shardings([("data", 2), ("fsdp", 4)], jax.devices())
  state8 = {**state8, "step": jnp.asarray(7, jnp.int32)}
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2)
  ckpts.save(7, state8, {"step": 7, "data": {"position": 42}})
  ckpts.wait()
  assert ckpts.latest_step() == 7
  want = jax.device_get(state8)
  for mesh_axes, devices in ([[("data", 1), ("fsdp", 4)], jax.devices()[:4]], [[("data", 1), ("fsdp", 1)], jax.devices()[:1]]):
    template, shardings = _state_and_shardings(mesh_axes, devices)
    abstract = checkpoint.abstract_with_shardings(jax.eval_shape(lambda s: s, template), shardings)
    restored, meta = checkpoint.Checkpoints(str(tmp_path)).restore(abstract)
    assert meta == {"step": 7, "data": {"position": 42}}
    leaf = restored["params"]["PaliGemma"]["llm"]["layers"]["mlp"]["gating_einsum"]
    assert leaf.sharding == shardings["params"]["PaliGemma"]["llm"]["layers"]["mlp"]["gating_einsum"]
    assert {d.id for d in leaf.sharding.device_set} == {d.id for d in devices}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(restored)), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b, err_msg=str(path))
  ckpts.close()


def test_keep_last_k_plus_every_m(tmp_path):
  state, _ = _state_and_shardings([("data", 1), ("fsdp", 1)], jax.devices()[:1])
  small = {"step": state["step"], "rng": state["rng"]}
  ckpts = checkpoint.Checkpoints(str(tmp_path), keep=2, keep_every=4, async_save=False)
  for s in range(1, 10):
    ckpts.save(s, small, {"step": s})
  ckpts.wait()
  assert sorted(ckpts.all_steps()) == [4, 8, 9]
  ckpts.close()


def test_missing_checkpoint_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="No complete checkpoint under .*checkpoints"):
    checkpoint.Checkpoints(str(tmp_path)).restore({})
