"""Orbax checkpoints of the sharded train state: restore onto other meshes and device counts."""

import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

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
    step7, restored, meta = checkpoint.Checkpoints(str(tmp_path)).restore_latest_good(abstract)
    assert step7 == 7 and meta == {"step": 7, "data": {"position": 42}}
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


def _two_checkpoints(tmp_path):
  mesh = sharding.make_mesh([("data", 1), ("fsdp", 8)], jax.devices())
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  states = {s: {"w": jax.device_put(jnp.arange(64_000, dtype=jnp.float32) * s, spec), "step": jnp.asarray(s)}
            for s in (1, 2)}
  ckpts = checkpoint.Checkpoints(str(tmp_path), async_save=False)
  for s, state in states.items():
    ckpts.save(s, state, {"step": s})
  ckpts.close()
  abstract = checkpoint.abstract_with_shardings(jax.eval_shape(lambda: states[1]),
                                                {"w": spec, "step": jax.sharding.NamedSharding(mesh, P())})
  return abstract, jax.device_get(states[1])


def _truncate_largest_array_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


@pytest.mark.parametrize("damage, names", [
    (_truncate_largest_array_file,
     r"file .*/checkpoints/2/state \(OCDBT entry w/\d+: array/chunk\): ValueError: OUT_OF_RANGE"),
    (lambda d: os.remove(os.path.join(d, "state", "_METADATA")), r"file .*/checkpoints/2/state/_METADATA: missing"),
    (lambda d: os.remove(os.path.join(d, "_CHECKPOINT_METADATA")), r"file .*/2/_CHECKPOINT_METADATA: missing"),
    (lambda d: shutil.rmtree(os.path.join(d, "meta")), r"file .*/checkpoints/2/meta/metadata: missing"),
    (lambda d: shutil.rmtree(os.path.join(d, "state")), r"file .*/checkpoints/2/state/_METADATA: missing"),
], ids=["truncated_array", "no_state_metadata", "no_checkpoint_metadata", "no_meta_item", "no_state_item"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_restores(tmp_path, caplog, damage, names):
  abstract, want = _two_checkpoints(tmp_path)
  directory = os.path.join(tmp_path, "checkpoints")
  damage(os.path.join(directory, "2"))
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    step, state, meta = ckpts.restore_latest_good(abstract)
  assert step == 1 and meta == {"step": 1}
  np.testing.assert_array_equal(jax.device_get(state["w"]), want["w"])
  lines = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
  assert len(lines) == 1 and re.search(r"step 2, " + names, lines[0]), lines
  assert sorted(os.listdir(directory)) == ["1", "2.damaged"]  # Renamed, never deleted.
  assert ckpts.all_steps() == [1]
  ckpts.close()


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  abstract, _ = _two_checkpoints(tmp_path)
  directory = os.path.join(tmp_path, "checkpoints")
  for s in ("1", "2"):
    os.remove(os.path.join(directory, s, "state", "_METADATA"))
  with pytest.raises(FileNotFoundError, match=r"No checkpoint under .* restores: steps \[2, 1\] are damaged"):
    checkpoint.Checkpoints(str(tmp_path)).restore_latest_good(abstract)
  assert checkpoint.Checkpoints(str(tmp_path)).restore_latest_good(abstract) is None  # Both were moved aside.


def test_a_checkpoint_of_another_config_is_an_error_and_stays(tmp_path):
  """Not damage: a state tree that differs (EMA switched on, another model) is named and left in place."""
  abstract, _ = _two_checkpoints(tmp_path)
  other = {**abstract, "ema_w": abstract["w"]}
  with pytest.raises(ValueError, match=r"step 2 .* holds another train state than this config builds \(not saved: "
                                       r"\['ema_w'\]\)"):
    checkpoint.Checkpoints(str(tmp_path)).restore_latest_good(other)
  assert sorted(os.listdir(os.path.join(tmp_path, "checkpoints"))) == ["1", "2"]
