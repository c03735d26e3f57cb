"""Throughput of the jitted, sharded train step on this machine: steps/s, samples/s and MFU.

The step is the trainer's own (pi0_jax.train.step, AdamW, state donated), on a mesh over the local devices,
fed a fixed random batch already on the devices (the input pipeline is measured by benchmarks/data.py).
FLOPs are the matmul FLOPs of the traced step with every scan counted by its length (XLA's cost analysis
counts a loop body once); MFU = FLOPs / step time / peak, where the peak is a measured f32 matmul (1024^3,
best of 5) on this host, since a CPU has no datasheet figure that XLA reaches.

Each row also checks the planner's step-time model (pi0_jax.hlo_cost, what `python -m pi0_jax.aot` projects
for TPU pods) where a measurement exists: the compiled step's HLO turned into a time with this host's measured
matmul peak and memory bandwidth (a jitted elementwise pass over 256 MiB, best of 5), against the measured
step: `projection_error` = measured / projected - 1.

  python benchmarks/train_step.py --presets=demo,small_100m --batch_sizes=32,8 --out=benchmarks/results/train_step.json
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_PRESETS = flags.DEFINE_list("presets", ["demo", "small_100m"], "Pi0Config presets (pi0_jax.model.PRESETS).")
_BATCH = flags.DEFINE_list("batch_sizes", ["32", "8"], "Global batch per preset (one value, or one per preset).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps after 2 warm-up steps (median reported).")
_REMAT = flags.DEFINE_string("remat", None, "Override the preset's remat policy.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/train_step.json", "JSON output ('' to skip).")


def projection(compiled, flops: float, peak: float, bandwidth: float) -> dict:
  """The planner's model of this step on this host (no collectives on one device)."""
  import jax
  from pi0_jax import hlo_cost
  rates = hlo_cost.ChipRates("host", peak, bandwidth, float("inf"), None)
  cost = hlo_cost.program_cost(compiled.as_text(), num_devices=jax.device_count())
  t = hlo_cost.step_time(matmul_flops=flops, cost=cost, rates=rates)
  return {"projected_s": t["projected_s"], "projected_bound": t["bound"], "projected_compute_s": t["compute_s"],
          "projected_memory_s": t["memory_s"], "hbm_gbytes": t["hbm_bytes"] / 1e9}


def bench(preset: str, batch: int, repeats: int, remat: str | None, peak: float, bandwidth: float) -> dict:
  import statistics
  import time

  import jax
  import jax.numpy as jnp
  import ml_collections
  from pi0_jax.model import Observation, get_preset
  from pi0_jax.train import defaults, metrics, setup

  config = defaults.base_config()  # Mesh data:1 x fsdp:all, the batch over both, parameters over fsdp.
  config.model = ml_collections.ConfigDict(get_preset(preset, **({"remat_policy": remat} if remat else {})).to_dict())
  config.global_batch = batch
  config.optimizer.update(peak_lr=1e-4, warmup_steps=10, decay_steps=1000, end_lr=1e-5)
  ts = setup.train_setup(config, setup.make_mesh(config))
  cfg = ts.model_config
  state = ts.init_state(jax.random.key(0))
  obs = Observation.fake(cfg, batch)
  obs = obs.replace(images={k: jax.random.uniform(jax.random.key(i), v.shape, minval=-1, maxval=1)
                            for i, (k, v) in enumerate(obs.images.items())})
  batch_tree = {"observation": obs,
                "actions": jax.random.normal(jax.random.key(9), (batch, cfg.action_horizon, cfg.action_dim)),
                "action_pad_mask": jnp.ones((batch, cfg.action_horizon), bool),
                "action_dim_mask": jnp.ones((batch, cfg.action_dim), bool)}
  batch_tree = jax.device_put(batch_tree, ts.batch_sharding)
  with jax.set_mesh(ts.mesh):
    traced = ts.train_step().trace(state, batch_tree)
    t0 = time.perf_counter()
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0
    flops = metrics.jaxpr_matmul_flops(traced.jaxpr)
    times = []
    for i in range(2 + repeats):
      t0 = time.perf_counter()
      state, m = compiled(state, batch_tree)
      jax.block_until_ready((state, m))
      if i >= 2:
        times.append(time.perf_counter() - t0)
  dt = statistics.median(times)
  n_params = sum(x.size for x in jax.tree.leaves(ts.abstract_params))
  return {"preset": preset, "params_M": n_params / 1e6, "dtype": cfg.dtype, "remat": cfg.remat_policy,
          "devices": jax.device_count(), "batch": batch, "compile_s": compile_s, "step_s": dt,
          "steps_per_s": 1 / dt, "samples_per_s": batch / dt, "step_gflops": flops / 1e9,
          "achieved_gflops_per_s": flops / dt / 1e9, "peak_gflops_per_s": peak / 1e9, "mfu": flops / dt / peak,
          "loss": float(m["loss"]), "memory_gbytes_per_s": bandwidth / 1e9,
          **(p := projection(compiled, flops, peak, bandwidth)), "projection_error": dt / p["projected_s"] - 1}


def main(argv):
  del argv
  import common
  from pi0_jax.train import metrics
  peak = metrics.measured_matmul_peak()
  bandwidth = metrics.measured_memory_bandwidth()
  batches = [int(b) for b in _BATCH.value]
  if len(batches) == 1:
    batches = batches * len(_PRESETS.value)
  rows = [bench(p, b, _REPEATS.value, _REMAT.value, peak, bandwidth) for p, b in zip(_PRESETS.value, batches)]
  common.print_table(rows, ["preset", "params_M", "dtype", "remat", "devices", "batch", "compile_s", "step_s",
                            "steps_per_s", "samples_per_s", "step_gflops", "achieved_gflops_per_s",
                            "peak_gflops_per_s", "mfu", "projected_s", "projected_bound", "projection_error"])
  common.write_json(_OUT.value, {"benchmark": "train_step", "machine": common.machine(), "rows": rows})


if __name__ == "__main__":
  app.run(main)
