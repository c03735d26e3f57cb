"""AOT compile of the train step for a TPU topology, on this CPU host (pi0_jax.aot)."""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from pi0_jax import aot
from pi0_jax.model import get_preset
from pi0_jax.train import sharding

TOPOLOGY = "v5e:2x2"  # 4 chips, one host: compiles the tiny model in ~10 s.
MESH = "data:2,fsdp:2"


def _needs_libtpu():
  pytest.importorskip("libtpu", reason="libtpu (the 'tpu' extra) provides the TPU compiler")


@pytest.fixture(scope="module")
def tiny_report():
  _needs_libtpu()
  return aot.compile_train_step(get_preset("tiny"), topology=TOPOLOGY, mesh_axes=MESH, global_batch=8,
                                ema_decay=0.99)


def test_report_has_memory_and_flops(tiny_report):
  r = tiny_report
  assert r["num_chips"] == 4 and r["mesh"] == {"data": 2, "fsdp": 2} and r["device_kind"].startswith("TPU v5")
  m = r["memory"]
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes", "state_bytes", "total_bytes"):
    assert m[key] > 0, key
  # The state is donated: its buffers are the outputs' buffers.
  assert m["alias_bytes"] > 0 and m["argument_bytes"] >= m["state_bytes"]
  assert m["fits"] and m["hbm_bytes"] == 16 * 2**30
  assert r["flops_per_chip"] > 0 and r["xla_flops_per_chip"] > 0
  assert r["flops_per_step"] == pytest.approx(4 * r["flops_per_chip"])
  # The raw XLA figure counts each scanned layer body once; the jaxpr count counts every layer.
  assert r["flops_per_chip"] > r["xla_flops_per_chip"]
  assert r["seconds_at_peak"] == pytest.approx(r["flops_per_chip"] / 197e12)
  if r["mfu_estimate"] is not None:  # Only when the cost model's figure is usable.
    assert r["optimal_seconds"] > 0 and 0 < r["mfu_estimate"] <= 1
    assert r["step_seconds_estimate"] >= r["seconds_at_peak"]
  t = r["step_time"]  # The planner's model (pi0_jax.hlo_cost): data parallel over 2, so gradients are reduced.
  assert t["compute_s"] == pytest.approx(r["flops_per_chip"] / 197e12)
  assert t["projected_s"] == max(t["compute_s"], t["memory_s"], t["comm_s"]) > 0 and t["ici_wire_bytes"] > 0
  assert t["dcn_wire_bytes"] == 0 and r["num_slices"] == 1
  text = aot.format_report(r)
  assert "temporaries" in text and "fits" in text and "projected step" in text


def test_flops_scale_with_batch_via_the_command_line(tiny_report, tmp_path):
  """The command with a config file, in a fresh process (its own environment setup), at twice the batch."""
  config = tmp_path / "tiny_aot.py"
  config.write_text(textwrap.dedent("""
      import ml_collections
      from pi0_jax.model import get_preset

      def get_config(arg=""):
        c = ml_collections.ConfigDict()
        c.model = ml_collections.ConfigDict(get_preset("tiny").to_dict())
        c.mesh = [["data", 2], ["fsdp", -1]]
        c.data_axes = ("data", "fsdp")
        c.fsdp_axes = ("fsdp",)
        c.sharding_rules = [[".*", "auto"]]
        c.global_batch = 8
        c.grad_accum_steps = 1
        c.optimizer = ml_collections.ConfigDict(dict(
            peak_lr=1e-4, warmup_steps=10, decay_steps=100, end_lr=1e-5, b1=0.9, b2=0.95, eps=1e-8,
            weight_decay=1e-10, clip_grad_norm=1.0, freeze=None, weight_decay_exclude=None))
        c.ema_decay = 0.99
        return c
  """))
  out = tmp_path / "report.json"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  proc = subprocess.run([sys.executable, "-m", "pi0_jax.aot", f"--config={config}", "--config.global_batch=16",
                         f"--topology={TOPOLOGY}", f"--json={out}"], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "per-chip memory" in proc.stdout and "FLOPs per step per chip" in proc.stdout
  big = json.loads(out.read_text())
  assert big["global_batch"] == 16 and big["mesh"] == {"data": 2, "fsdp": 2}
  ratio = big["flops_per_chip"] / tiny_report["flops_per_chip"]
  assert 1.6 < ratio < 2.4, ratio
  xla_ratio = big["xla_flops_per_chip"] / tiny_report["xla_flops_per_chip"]
  assert 1.6 < xla_ratio < 2.4, xla_ratio


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_batch=6), "global_batch=6 is not divisible by the data-parallel size 4"),
    (dict(global_batch=8, grad_accum_steps=4), "grad_accum_steps=4 micro-batches"),
    (dict(mesh_axes="data:2,fsdp:4"), "need 8 devices, but only 4 are available on v5e:2x2"),
    (dict(mesh_axes="data:3,fsdp:-1"), "4 devices are not a multiple of 3 on v5e:2x2"),
    (dict(fsdp_axes=("fsdp", "fsdp2")), "fsdp_axes names 'fsdp2'"),
    (dict(data_axes=("data", "model")), "data_axes names 'model'"),
    (dict(topology="v9x:2x2"), "unknown TPU generation 'v9x'"),
    (dict(topology="v5e:2x2x2"), "v5e topologies have 2 positive dimensions"),
    (dict(topology="v5e-256"), "expected GENERATION:DIMS"),
])
def test_bad_settings_fail_before_compiling(monkeypatch, kwargs, message):
  def no_compile(*_):
    raise AssertionError("reached libtpu: the settings should have been rejected first")

  monkeypatch.setattr(aot, "topology_devices", no_compile)
  args = dict(topology=TOPOLOGY, mesh_axes=MESH, global_batch=8) | kwargs
  t0 = time.perf_counter()
  with pytest.raises(ValueError, match=message):
    aot.compile_train_step(get_preset("tiny"), **args)
  assert time.perf_counter() - t0 < 5


def test_out_of_hbm_is_a_report_not_a_crash(monkeypatch):
  """The TPU compiler refuses programs larger than HBM; the report says so (faked here: a real one takes ~30 s)."""
  _needs_libtpu()

  def out_of_memory(self, *args, **kwargs):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
                                     "HLO temporaries (22.03G) exceeds available HBM (15.75G).")

  monkeypatch.setattr(jax.stages.Lowered, "compile", out_of_memory)
  r = aot.compile_train_step(get_preset("tiny"), topology=TOPOLOGY, mesh_axes=MESH, global_batch=8)
  m = r["memory"]
  assert m["fits"] is False and "RESOURCE_EXHAUSTED" in m["compiler_error"]
  assert m["temp_bytes"] == int(22.03 * 2**30) and m["hbm_available_bytes"] == int(15.75 * 2**30)
  assert r["flops_per_chip"] > 0 and r["mfu_estimate"] is None
  assert "DOES NOT FIT" in aot.format_report(r)


def test_libtpu_rejection_is_a_clear_error():
  _needs_libtpu()
  # Well-formed but not a layout libtpu accepts on 2x2-chip hosts.
  with pytest.raises(ValueError, match="libtpu could not build it"):
    aot.topology_devices("v5e:3x3")


def test_jaxpr_flops_count_scans_and_remat():
  def layers(w, x):
    return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]

  loss = jax.checkpoint(lambda w, x: layers(w, x).sum())
  one_matmul = 2 * 16 * 32 * 32
  for depth in (1, 5):
    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(jnp.zeros((depth, 32, 32)), jnp.zeros((16, 32)))
    # Forward, recomputed forward, and two matmuls backward, per layer.
    assert aot.jaxpr_matmul_flops(jaxpr) == 4 * depth * one_matmul


def test_mesh_parsing():
  assert sharding.resolve_mesh_axes("data:1,fsdp:16,fsdp2:-1", 256) == [("data", 1), ("fsdp", 16), ("fsdp2", 16)]
  assert sharding.resolve_mesh_axes([["data", -1]], 64) == [("data", 64)]
  with pytest.raises(ValueError, match="NAME:SIZE"):
    sharding.parse_mesh("data=4")
  assert aot.num_chips("v5p:4x4x4") == 64 and aot.num_chips("v6e:16x16") == 256
