"""The planner's cost model against hand counts: collective bytes of small sharded steps, trip counts, groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pi0_jax import aot  # noqa: F401  (sets libtpu's compile-only environment before it loads)
from pi0_jax import hlo_cost


def test_shape_bytes_sums_tuples_and_layouts():
  assert hlo_cost.shape_bytes("bf16[8,128]{1,0:T(8,128)(2,1)}") == 8 * 128 * 2
  assert hlo_cost.shape_bytes("(f32[3,4]{1,0}, s32[], pred[2])") == 48 + 4 + 2


@pytest.mark.parametrize("text,groups", [
    ("replica_groups={{0,2},{1,3}}, dimensions={0}", [[0, 2], [1, 3]]),
    ("replica_groups=[2,4]<=[8], dimensions={0}", [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ("replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}", [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, x=1",
     [[0, 1, 2, 3], [4, 5, 6, 7]]),
])
def test_replica_groups_in_every_printed_form(text, groups):
  assert hlo_cost.replica_groups(text, 8) == groups


def _cpu_mesh():
  return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))


def test_data_parallel_step_all_reduces_exactly_the_gradients_and_the_loss():
  mesh = _cpu_mesh()
  rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(("data", "fsdp")))

  def step(params, x, y):
    loss, g = jax.value_and_grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, g), loss

  params = {"w": jnp.ones((64, 32)), "b": jnp.zeros((32,))}
  compiled = jax.jit(step, in_shardings=(rep, rows, rows), out_shardings=(rep, rep)).lower(
      params, jnp.ones((16, 64)), jnp.ones((16, 32))).compile()
  cost = hlo_cost.program_cost(compiled.as_text(), num_devices=8)
  assert cost.bytes_by_kind()["all-reduce"] == (64 * 32 + 32) * 4 + 4  # f32 gradients + the f32 loss
  assert sum(cost.bytes_by_kind().values()) == (64 * 32 + 32) * 4 + 4
  assert {c.group_size for c in cost.collectives} == {8}


def test_a_gather_inside_a_scan_counts_once_per_layer():
  mesh, layers, d = _cpu_mesh(), 3, 64
  w = jax.device_put(jnp.ones((layers, d, d)), NamedSharding(mesh, P(None, "fsdp", None)))
  rows = NamedSharding(mesh, P(("data", "fsdp")))

  def forward(w, x):
    return jax.lax.scan(lambda x, wi: (jnp.tanh(x @ wi), None), x, w)[0]

  compiled = jax.jit(forward, out_shardings=rows).lower(w, jax.device_put(jnp.ones((16, d)), rows)).compile()
  cost = hlo_cost.program_cost(compiled.as_text(), num_devices=8)
  assert cost.bytes_by_kind()["all-gather"] == layers * d * d * 4


def test_fsdp_step_on_two_tpu_slices_matches_the_hand_count():
  """An L-layer bf16 MLP, FSDP over the 4 chips of a v5e 2x2 slice, data parallel across 2 slices.

  By hand, per chip and step: each layer's weight is all-gathered in bf16 for the forward and again for the
  backward (2 L x d² x 2 bytes); its gradient, bf16 up to the cast, is reduce-scattered inside the slice
  (L x d² x 2 bytes) and the resulting shard all-reduced across the slices over the data-centre network
  (L x d² x 2 / 4 bytes).
  """
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
                                      chips_per_host_bounds=(2, 2, 1), num_slices=2)
  mesh = Mesh(np.array(topo.devices).reshape(2, 4), ("data", "fsdp"))
  layers, d = 3, 256
  w_sh = NamedSharding(mesh, P(None, "fsdp", None))

  def step(w, x):
    def loss(w):
      out = jax.lax.scan(lambda x, wi: (jnp.tanh(x @ wi.astype(jnp.bfloat16)), None), x, w)[0]
      return jnp.mean(out.astype(jnp.float32) ** 2)
    return w - 0.1 * jax.grad(loss)(w)

  compiled = jax.jit(step, in_shardings=(w_sh, NamedSharding(mesh, P(("data", "fsdp")))), out_shardings=w_sh).lower(
      jax.ShapeDtypeStruct((layers, d, d), jnp.float32), jax.ShapeDtypeStruct((64, d), jnp.bfloat16)).compile()
  cost = hlo_cost.program_cost(compiled.as_text(), num_devices=8, devices_per_slice=4)
  kinds = cost.bytes_by_kind()
  assert kinds["all-gather"] == 2 * layers * d * d * 2
  assert kinds["reduce-scatter"] == layers * d * d * 2
  assert kinds["all-reduce"] == layers * d * d * 2 // 4
  assert all(c.crosses_slices == (c.kind == "all-reduce") for c in cost.collectives)
  assert cost.wire_bytes(crosses_slices=True) == layers * d * d * 2 // 4  # ring of 2: 2 x (1/2) x the shard


def test_step_time_terms():
  cost = hlo_cost.ProgramCost(
      collectives=[hlo_cost.Collective("all-gather", 4 * 10**9, 4, 1, False)], hbm_bytes=819e9)
  t = hlo_cost.step_time(matmul_flops=197e12 * 2, cost=cost, rates=hlo_cost.CHIP_RATES["v5e"])
  assert t["compute_s"] == pytest.approx(2.0)
  assert t["memory_s"] == pytest.approx(1.0)
  assert t["ici_s"] == pytest.approx(3e9 / 200e9)
  assert t["projected_s"] == pytest.approx(2.0) and t["bound"] == "compute"
  assert t["mfu"] == pytest.approx(1.0)
  assert t["no_overlap_s"] == pytest.approx(2.0 + 3e9 / 200e9)


def test_slice_axis_runs_across_slices_and_fsdp_inside():
  from pi0_jax.train import setup, sharding
  from pi0_jax.train.defaults import base_config
  devices = aot.topology_devices("v5e:2x2", num_slices=2)
  assert sharding.num_slices(devices) == 2
  config = setup.with_slices(base_config(), 2)
  assert config.mesh == (("slice", 2), ("data", 1), ("fsdp", -1)) and config.data_axes == ("slice", "data", "fsdp")
  mesh = sharding.make_mesh(config.mesh, devices)
  assert dict(mesh.shape) == {"slice": 2, "data": 1, "fsdp": 4}
  for i in range(2):  # Each index of the slice axis holds exactly one slice's chips.
    assert {d.slice_index for d in mesh.devices[i].flat} == {i}
  with pytest.raises(ValueError, match="span 2 slices, so the mesh needs a 'slice' axis of size 2"):
    sharding.make_mesh((("data", 2), ("fsdp", 4)), devices)
  assert setup.with_slices(config, 2) is config  # Already has one.


def test_plan_ranks_candidates_by_projected_throughput(tmp_path):
  """The planner on the tiny model and a 4-chip v5e: two remat policies, one batch, one mesh, real compiles."""
  from pi0_jax.train.defaults import base_config
  import ml_collections
  from pi0_jax.model.config import get_preset
  config = base_config()
  config.model = ml_collections.ConfigDict(get_preset("tiny").to_dict())
  rows = aot.plan(config, topology="v5e:2x2", per_chip_batches=(2,), meshes=[(("data", 1), ("fsdp", 4))],
                  remat_policies=("nothing_saveable", "none"), progress=lambda _: None)
  assert [r["fits"] for r in rows] == [True, True]
  assert {r["remat_policy"] for r in rows} == {"nothing_saveable", "none"}
  assert rows[0]["samples_per_s"] >= rows[1]["samples_per_s"] > 0
  assert all(r["global_batch"] == 8 and r["mesh"] == {"data": 1, "fsdp": 4} for r in rows)
  # Remat recomputes the forward pass: more matmul FLOPs than keeping every activation.
  flops = {r["remat_policy"]: r["flops_per_chip"] for r in rows}
  assert flops["nothing_saveable"] > flops["none"]
  assert "fastest first" in aot.format_plan(rows, "v5e:2x2")
