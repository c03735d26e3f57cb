"""Ahead-of-time compile of the real train step for a TPU topology, on any host.

Before paying for a pod, this answers "does the step fit, and how much work is
it": libtpu's topology API gives compile-only devices for e.g. a v5e-256, the
train step is lowered with abstract (ShapeDtypeStruct) state and batch carrying
their NamedShardings, and XLA's TPU compiler reports the per-chip memory and
cost. No array is ever allocated, so a CPU host with a few GiB compiles the
full 3.3B-parameter pi0.

  python -m pi0_jax.aot --config=configs/pi0_oxe_pretrain.py --topology=v5e:16x16
  python -m pi0_jax.aot --topology=v5p:4x4x4 --preset=pi0 --global_batch=256
      --mesh=data:1,fsdp:8,fsdp2:8 --ema_decay=0.99 --json=/tmp/aot.json  (one line)

From Python: `compile_train_step(model_config, topology=..., mesh_axes=..., ...)`, or
`compile_config(config, topology=...)` for a trainer config, returns the report dict that the command
prints. Mesh, state, shardings and the jitted step come from pi0_jax.train.setup, as in the trainer.

FLOPs. XLA's `cost_analysis()` counts the body of a while loop once, whatever
its trip count, and pi0 scans over its layers (18 Gemma, 27 SigLIP), so the raw
figure undercounts the step several times over. The report therefore gives two
numbers: `flops_per_chip`, the matmul FLOPs (dot_general and convolution) of the
traced step with every scan multiplied by its length, remat recomputation
included, divided over the data-parallel shards; and `xla_flops_per_chip`, the raw
cost-analysis figure. The compiler's roofline `optimal_seconds` comes from the
same cost model; the projected MFU is XLA's flops / optimal_seconds / the chip's
peak (both see the scanned layers once, so the ratio is the model's efficiency
estimate), and the projected step time is the counted FLOPs at that efficiency.
These are estimates from a cost model, not measurements, and they are left out
when the model's figure is unusable (for pi0 on 256 v5e chips it is negative).
"""

from __future__ import annotations

import os

# libtpu must never try to reach a cloud metadata server from a machine that is not a TPU VM. Its lockfile
# keeps two processes off the same chips; compile-only devices touch none, so several processes (parallel
# tests, a benchmark) may load it at once. Both are read when libtpu loads: lazily, at the first topology.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
if __name__ == "__main__":
  # The command only compiles: keep jax off any local accelerator (a training job may hold it). Read when
  # jax is imported, hence before the imports below.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Mapping, Sequence  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from pi0_jax import files, hlo_cost, logs  # noqa: E402
from pi0_jax.model import Pi0Config, get_preset  # noqa: E402
from pi0_jax.train import defaults, setup, sharding  # noqa: E402
from pi0_jax.train.metrics import jaxpr_matmul_flops  # noqa: E402,F401  (also re-exported)

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class ChipSpec:
  """Public per-chip figures of a TPU generation."""

  generation: str
  peak_bf16_flops: float
  hbm_bytes: int
  topology_dims: int  # 2-d torus (v5e, v6e) or 3-d (v4, v5p) topology names.
  chip_config_name: str  # libtpu's chip configuration: one JAX device per chip in each case.


CHIPS: dict[str, ChipSpec] = {
    # v4 runs as "megacore" (both TensorCores as one device), as JAX does on real v4 chips; libtpu's
    # "default" there would give one device per core.
    "v4": ChipSpec("v4", 275e12, 32 * GiB, 3, "megacore"),
    "v5e": ChipSpec("v5e", 197e12, 16 * GiB, 2, "default"),
    "v5p": ChipSpec("v5p", 459e12, 95 * GiB, 3, "default"),
    "v6e": ChipSpec("v6e", 918e12, 32 * GiB, 2, "default"),
}

def parse_topology(topology: str) -> tuple[ChipSpec, tuple[int, ...]]:
  """'v5e:16x16' -> (the v5e ChipSpec, (16, 16)); ValueError naming the known forms otherwise."""
  known = ", ".join(f"{g}:" + "x".join(["N"] * c.topology_dims) for g, c in CHIPS.items())
  m = re.fullmatch(r"\s*([a-z0-9]+):(\d+(?:x\d+)*)\s*", str(topology).lower())
  if not m:
    raise ValueError(f"topology {topology!r}: expected GENERATION:DIMS, e.g. v5e:16x16 or v5p:4x4x4 "
                     f"(known: {known}).")
  gen, dims = m.group(1), tuple(int(d) for d in m.group(2).split("x"))
  if gen not in CHIPS:
    raise ValueError(f"topology {topology!r}: unknown TPU generation {gen!r}; known: {known}.")
  chip = CHIPS[gen]
  if len(dims) != chip.topology_dims or min(dims) < 1:
    raise ValueError(f"topology {topology!r}: {gen} topologies have {chip.topology_dims} positive dimensions, "
                     f"e.g. {gen}:" + "x".join(["4"] * chip.topology_dims) + ".")
  return chip, dims


def num_chips(topology: str) -> int:
  return math.prod(parse_topology(topology)[1])


def topology_devices(topology: str, num_slices: int = 1) -> list:
  """Compile-only devices of `num_slices` slices of `topology` from libtpu (no TPU needed); ValueError if libtpu
  rejects it. Each device's `slice_index` says its slice."""
  chip, dims = parse_topology(topology)
  if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
    # Nothing in this process will run a real TPU runtime, so libtpu's multi-host settings do not matter;
    # a placeholder keeps it from logging an error about the (unset) worker list.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental import topologies  # Local: loads libtpu.

  # Hosts of 2x2 chips, as on TPU VMs of every generation here (smaller topologies: one host).
  bounds = tuple(min(2, d) for d in dims[:2]) + (1,)
  name = f"{chip.generation}:" + "x".join(map(str, dims))
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name=chip.chip_config_name,
                                        chips_per_host_bounds=bounds, num_slices=int(num_slices))
  except Exception as e:  # libtpu's own message says what it disliked; keep it.
    raise ValueError(f"topology {topology!r}: libtpu could not build it: {e}") from e
  devices = list(desc.devices)
  if len(devices) != math.prod(dims) * num_slices:
    raise ValueError(f"topology {topology!r} x {num_slices} slices: libtpu returned {len(devices)} devices for "
                     f"{math.prod(dims) * num_slices} chips.")
  return devices


def _per_chip_bytes(abstract_tree) -> int:
  """Bytes of the largest shard of every leaf, summed: what one chip holds of `abstract_tree`."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_tree))


# --- The compile ----------------------------------------------------------------------------------------


def train_config(model_config: Pi0Config, *, mesh_axes, global_batch: int, data_axes: Sequence[str] | None = None,
                 fsdp_axes: Sequence[str] | None = None, optimizer_cfg: Mapping[str, Any] | None = None,
                 ema_decay: float | None = None, grad_accum_steps: int = 1,
                 rules=((".*", "auto"),)) -> ml_collections.ConfigDict:
  """The trainer config these settings describe; everything else (e.g. the optimizer) from train.defaults.

  mesh_axes: [(name, size)] or 'data:1,fsdp:-1'. data_axes default to every mesh axis, fsdp_axes to the axes
  named fsdp*.
  """
  axes = sharding.parse_mesh(mesh_axes)
  c = defaults.base_config()
  c.model = ml_collections.ConfigDict(model_config.to_dict())
  c.mesh = [[name, size] for name, size in axes]
  c.data_axes = tuple(data_axes) if data_axes is not None else tuple(n for n, _ in axes)
  c.fsdp_axes = tuple(fsdp_axes) if fsdp_axes is not None else tuple(n for n, _ in axes if n.startswith("fsdp"))
  c.sharding_rules = [list(r) for r in rules]
  c.global_batch, c.grad_accum_steps, c.ema_decay = int(global_batch), int(grad_accum_steps), ema_decay
  if optimizer_cfg is not None:
    c.optimizer = ml_collections.ConfigDict(dict(optimizer_cfg))
  return c


def compile_train_step(model_config: Pi0Config, *, topology: str, mesh_axes, global_batch: int,
                       data_axes: Sequence[str] | None = None, fsdp_axes: Sequence[str] | None = None,
                       optimizer_cfg: Mapping[str, Any] | None = None, ema_decay: float | None = None,
                       grad_accum_steps: int = 1, rules=((".*", "auto"),), peak_flops: float | None = None,
                       hbm_bytes: int | None = None, num_slices: int = 1) -> dict:
  """Compiles pi0's train step for `topology` without allocating anything; returns the report dict.

  The settings are those of `train_config`; sizes one may be -1 and must multiply to the chip count.
  peak_flops / hbm_bytes override the chip table's figures.
  """
  config = train_config(model_config, mesh_axes=mesh_axes, global_batch=global_batch, data_axes=data_axes,
                        fsdp_axes=fsdp_axes, optimizer_cfg=optimizer_cfg, ema_decay=ema_decay,
                        grad_accum_steps=grad_accum_steps, rules=rules)
  return compile_config(config, topology=topology, num_slices=num_slices, peak_flops=peak_flops, hbm_bytes=hbm_bytes)


def compile_config(config, *, topology: str, num_slices: int = 1, peak_flops: float | None = None,
                   hbm_bytes: int | None = None) -> dict:
  """Compiles the train step of a trainer config (pi0_jax.train.setup, as the trainer does) for `topology`.

  Raises ValueError before loading the TPU compiler for an unknown topology, a mesh that does not match the
  chip count, unknown data/FSDP axes or a batch the data-parallel size does not divide.
  """
  chip, dims = parse_topology(topology)
  if num_slices < 1:
    raise ValueError(f"num_slices={num_slices}: expected an integer >= 1.")
  config = setup.with_slices(config, num_slices)  # Data parallel across slices, FSDP inside each.
  where = f" on {topology}" + (f" x {num_slices} slices" if num_slices > 1 else "")
  axes = setup.resolve_layout(config, math.prod(dims) * num_slices, where=where)
  t_start = time.perf_counter()
  devices = topology_devices(topology, num_slices)
  ts = setup.train_setup(config, sharding.make_mesh(axes, devices))
  abstract_batch = ts.abstract_batch(int(config.global_batch))
  with jax.set_mesh(ts.mesh):
    traced = ts.train_step().trace(ts.abstract_state, abstract_batch)
    lowered = traced.lower()
  t_lowered = time.perf_counter()
  try:
    with logs.compiling(f"the train step for {topology}"):
      compiled, compile_error = lowered.compile(), None
  except Exception as e:
    # The TPU compiler refuses a program whose buffers exceed the chip's HBM: that is an answer, not a crash.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    compiled, compile_error = None, str(e)
  t_compiled = time.perf_counter()
  memory = _memory(compiled, compile_error, ts.abstract_state, abstract_batch, int(hbm_bytes or chip.hbm_bytes))
  cost = _cost_analysis(compiled)
  report = {
      "topology": topology,
      "num_slices": int(num_slices),
      "generation": chip.generation,
      "device_kind": devices[0].device_kind,
      "num_chips": len(devices),
      "mesh": dict(ts.mesh.shape),
      "data_axes": list(ts.data_axes),
      "fsdp_axes": list(ts.fsdp_axes),
      "global_batch": int(config.global_batch),
      "per_chip_batch": int(config.global_batch) / ts.data_parallel_size,
      "grad_accum_steps": ts.grad_accum_steps,
      "ema": ts.ema_decay is not None,
      "num_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(ts.abstract_params))),
      "model": _model_summary(ts.model_config),
      "memory": memory,
  }
  report.update(_flops(traced, cost, ts.data_parallel_size, int(config.global_batch),
                       float(peak_flops or chip.peak_bf16_flops)))
  report["step_time"] = _step_time(compiled, report, chip, len(devices), num_slices, peak_flops)
  report.update(lower_s=t_lowered - t_start, compile_s=t_compiled - t_lowered, jax_version=jax.__version__,
                libtpu_version=_libtpu_version())
  return report


def _step_time(compiled, report: dict, chip: ChipSpec, num_devices: int, num_slices: int,
               peak_flops: float | None) -> dict | None:
  """The projected step time (pi0_jax.hlo_cost) from the compiled program and the chip's published rates."""
  rates = hlo_cost.CHIP_RATES.get(chip.generation)
  if compiled is None or rates is None:
    return None
  if peak_flops:
    rates = dataclasses.replace(rates, peak_flops=float(peak_flops))
  cost = hlo_cost.program_cost(compiled.as_text(), num_devices=num_devices,
                               devices_per_slice=num_devices // num_slices)
  t = hlo_cost.step_time(matmul_flops=report["flops_per_chip"], cost=cost, rates=rates)
  t["samples_per_s"] = report["global_batch"] / t["projected_s"] if t["projected_s"] else None
  return t


# --- The planner ----------------------------------------------------------------------------------------

PLAN_REMAT = ("nothing_saveable", "dots_with_no_batch_dims_saveable")


def plan_meshes(chips: int) -> list[tuple[tuple[str, int], ...]]:
  """Mesh factorisations worth trying on `chips` chips of one slice: all-FSDP; two FSDP axes (so 1152- and
  4304-wide weights split further); and data x FSDP with 2 or 4 replicas of the sharded state."""
  meshes = [(("data", 1), ("fsdp", chips))]
  side = math.isqrt(chips)
  if side * side == chips and side > 1:
    meshes.append((("data", 1), ("fsdp", side), ("fsdp2", side)))
  meshes += [(("data", d), ("fsdp", chips // d)) for d in (2, 4) if chips % d == 0 and chips // d > 1]
  return meshes


def plan(config, *, topology: str, num_slices: int = 1, per_chip_batches=(4, 8), remat_policies=PLAN_REMAT,
         meshes=None, progress: Callable[[str], None] = print) -> list[dict]:
  """Compiles `config`'s train step for every remat policy x per-chip batch x mesh on `topology` and returns
  one row per candidate, those that fit first, fastest projected samples/s first (pi0_jax.hlo_cost).

  The config's own optimizer, EMA and model stay; its mesh, data/FSDP axes, global batch and remat policy
  are the candidates'. A candidate that does not fit is kept (fits=False) with the compiler's reason.
  """
  chips = num_chips(topology)
  rows = []
  candidates = [(r, b, m) for r in remat_policies for b in per_chip_batches for m in (meshes or plan_meshes(chips))]
  for i, (remat, per_chip, mesh) in enumerate(candidates):
    c = config.copy_and_resolve_references()
    c.model.remat_policy = remat
    c.mesh = tuple(mesh)
    c.data_axes = tuple(name for name, _ in mesh)
    c.fsdp_axes = tuple(name for name, _ in mesh if name.startswith("fsdp"))
    c.global_batch = int(per_chip) * chips * int(num_slices)
    label = f"remat={remat} per_chip_batch={per_chip} mesh={dict(mesh)}"
    progress(f"[{i + 1}/{len(candidates)}] {label}")
    r = compile_config(c, topology=topology, num_slices=num_slices)
    t = r.get("step_time") or {}
    rows.append({"remat_policy": remat, "per_chip_batch": per_chip, "mesh": r["mesh"],
                 "global_batch": r["global_batch"], "fits": bool(r["memory"]["fits"]),
                 "total_gib": r["memory"].get("total_bytes", r["memory"].get("temp_bytes", 0)) / GiB,
                 "flops_per_chip": r["flops_per_chip"], "projected_s": t.get("projected_s"),
                 "bound": t.get("bound"), "mfu": t.get("mfu"), "samples_per_s": t.get("samples_per_s"),
                 "terms_s": {k: t.get(k) for k in ("compute_s", "memory_s", "ici_s", "dcn_s")} if t else None,
                 "compile_s": r["compile_s"]})
  return sorted(rows, key=lambda row: (not row["fits"], -(row["samples_per_s"] or 0)))


def format_plan(rows: list[dict], topology: str, num_slices: int = 1) -> str:
  where = topology + (f" x {num_slices} slices" if num_slices > 1 else "")
  lines = [f"plan for {where}: {len(rows)} candidates, fastest first (projected by pi0_jax.hlo_cost)",
           f"{'remat':34} {'b/chip':>6} {'mesh':28} {'GiB':>6} {'fits':>4} {'step s':>8} {'samples/s':>10} "
           f"{'MFU':>6} bound"]
  for r in rows:
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    timing = (f"{r['projected_s']:8.3f} {r['samples_per_s']:10.1f} {100 * r['mfu']:5.1f}% {r['bound']}"
              if r["projected_s"] else f"{'-':>8} {'-':>10} {'-':>6}")
    lines.append(f"{r['remat_policy']:34} {r['per_chip_batch']:>6} {mesh:28} {r['total_gib']:6.2f} "
                 f"{'yes' if r['fits'] else 'NO':>4} {timing}")
  return "\n".join(lines)


def _model_summary(cfg: Pi0Config) -> dict:
  return {"remat_policy": cfg.remat_policy, "dtype": cfg.dtype, "image_keys": list(cfg.image_keys),
          "image_resolution": cfg.image_resolution, "action_horizon": cfg.action_horizon,
          "action_dim": cfg.action_dim, "max_token_len": cfg.max_token_len, "prefix_len": cfg.prefix_len}


def _memory(compiled, compile_error: str | None, abstract_state, abstract_batch, hbm: int) -> dict:
  """Per-chip bytes: the compiler's plan, or what its out-of-memory message says."""
  memory = {"state_bytes": _per_chip_bytes(abstract_state), "batch_bytes": _per_chip_bytes(abstract_batch),
            "hbm_bytes": hbm}
  if compiled is None:
    memory.update(fits=False, compiler_error=compile_error.strip().splitlines()[0][:2000])
    # e.g. "... memory required for HLO temporaries (30.04G) exceeds available HBM (15.75G)"; XLA's G is GiB.
    for key, pattern in (("temp_bytes", r"HLO temporaries \(([\d.]+)G\)"),
                         ("hbm_available_bytes", r"available HBM \(([\d.]+)G\)")):
      found = re.search(pattern, compile_error)
      if found:
        memory[key] = int(float(found.group(1)) * GiB)
    return memory
  mem = compiled.memory_analysis()
  memory.update(argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
                alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                generated_code_bytes=int(mem.generated_code_size_in_bytes))
  # Donated state buffers are reused for the new state: count them once.
  memory["total_bytes"] = (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
                           + memory["temp_bytes"] + memory["generated_code_bytes"])
  memory.update(hbm_fraction=memory["total_bytes"] / hbm, fits=memory["total_bytes"] <= hbm)
  return memory


def _cost_analysis(compiled) -> dict:
  if compiled is None:
    return {}
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  return dict(cost or {})


def _flops(traced, cost: dict, dp: int, global_batch: int, peak: float) -> dict:
  """Counted and XLA FLOPs, and the estimates from XLA's cost model (module docstring)."""
  flops_global = jaxpr_matmul_flops(traced.jaxpr)
  # Each data-parallel shard computes its slice of the batch; other mesh axes (if any) repeat that work, as
  # nothing here is tensor-parallel.
  flops_per_chip = flops_global / dp
  xla_flops = float(cost["flops"]) if "flops" in cost else None
  raw_optimal = float(cost["optimal_seconds"]) if "optimal_seconds" in cost else None
  # The cost model gives a negative figure for some programs (seen for the full pi0 on 256 chips): unusable.
  optimal_seconds = raw_optimal if raw_optimal and raw_optimal > 0 else None
  # FLOPs and optimal_seconds from the same cost model, which sees each scanned layer once in both: their
  # ratio is its efficiency estimate. The jaxpr FLOPs over optimal_seconds would exceed 100% (pi0 on v5p: ~8x).
  mfu = xla_flops / optimal_seconds / peak if optimal_seconds and xla_flops else None
  if mfu is not None and not 0 < mfu <= 1:
    mfu = None
  return {
      "flops_per_chip": flops_per_chip,
      "flops_per_step": flops_global,
      "flops_source": "jaxpr matmul count (scans x length, remat recompute included) / data-parallel size",
      "xla_flops_per_chip": xla_flops,
      "xla_bytes_accessed_per_chip": float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
      "optimal_seconds": optimal_seconds,
      "optimal_seconds_raw": raw_optimal,
      "peak_flops_per_chip": peak,
      "seconds_at_peak": flops_per_chip / peak,
      "mfu_estimate": mfu,
      # The counted FLOPs at that efficiency.
      "step_seconds_estimate": flops_per_chip / peak / mfu if mfu else None,
      "samples_per_s_estimate": global_batch * peak * mfu / flops_per_chip if mfu and flops_per_chip else None,
  }


def _libtpu_version() -> str | None:
  try:
    from importlib import metadata
    return metadata.version("libtpu")
  except Exception:  # Not installed under that name (e.g. libtpu-nightly).
    return None


def _si(x: float) -> str:
  """1.23e12 -> '1.23 T'."""
  for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.3g} {prefix}"
  return f"{x:.3g} "


def format_report(r: dict) -> str:
  """The report as a few readable lines."""
  m = r["memory"]
  unit = GiB if m.get("total_bytes", GiB) >= GiB else 2**20  # One unit for the whole table, so columns compare.
  unit_name = "GiB" if unit == GiB else "MiB"

  def gib(b):
    return f"{b / unit:8.2f} {unit_name}"

  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  lines = [
      f"pi0 train step on {r['topology']}" + (f" x {r['num_slices']} slices" if r.get("num_slices", 1) > 1 else "")
      + f": {r['num_chips']} x {r['device_kind']}, mesh {mesh}",
      f"  {_si(r['num_params'])} params; global batch {r['global_batch']} ({r['per_chip_batch']:g} per "
      f"data-parallel shard, grad accum {r['grad_accum_steps']}), {r['model']['dtype']}, remat "
      f"{r['model']['remat_policy']}, EMA {'on' if r['ema'] else 'off'}",
      "per-chip memory:",
  ]
  if "compiler_error" in m:
    lines += [f"  train state     {gib(m['state_bytes'])}",
              f"  DOES NOT FIT: the compiler gave up: {m['compiler_error']}"]
  else:
    lines += [
      f"  arguments       {gib(m['argument_bytes'])}  (train state {m['state_bytes'] / unit:.2f}, batch "
      f"{m['batch_bytes'] / unit:.2f})",
      f"  outputs         {gib(m['output_bytes'])}  ({m['alias_bytes'] / unit:.2f} aliased to donated arguments)",
      f"  temporaries     {gib(m['temp_bytes'])}",
      f"  generated code  {gib(m['generated_code_bytes'])}",
      f"  total           {gib(m['total_bytes'])}  of {m['hbm_bytes'] / GiB:.0f} GiB HBM "
      f"({100 * m['hbm_fraction']:.0f}%): {'fits' if m['fits'] else 'DOES NOT FIT'}",
    ]
  lines += [
      f"FLOPs per step per chip: {_si(r['flops_per_chip'])}FLOP (matmuls, layer scans counted in full, "
      f"remat included); XLA cost_analysis: "
      + (f"{_si(r['xla_flops_per_chip'])}FLOP (scan bodies counted once)" if r["xla_flops_per_chip"]
         else "n/a"),
  ]
  peak = f"{r['peak_flops_per_chip'] / 1e12:.0f} TFLOP/s"
  lines.append(f"step time at {peak} peak (100% MFU, a floor): {r['seconds_at_peak']:.4g} s")
  t = r.get("step_time")
  if t:
    lines.append(
        f"projected step (pi0_jax.hlo_cost): {t['projected_s']:.4g} s, {t['bound']}-bound, MFU "
        f"{100 * t['mfu']:.1f}%, {t['samples_per_s']:.4g} samples/s; terms: compute {t['compute_s']:.4g} s, HBM "
        f"{_si(t['hbm_bytes'])}B -> {t['memory_s']:.4g} s, ICI {_si(t['ici_wire_bytes'])}B -> {t['ici_s']:.4g} s"
        + (f", DCN {_si(t['dcn_wire_bytes'])}B -> {t['dcn_s']:.4g} s" if t["dcn_wire_bytes"] else "")
        + f" (no overlap: {t['no_overlap_s']:.4g} s)")
  lines.append(f"lowered in {r['lower_s']:.1f} s, compiler ran {r['compile_s']:.1f} s "
               f"(jax {r['jax_version']}, libtpu {r['libtpu_version']})")
  return "\n".join(lines)


# --- Command line ---------------------------------------------------------------------------------------

_STANDALONE = ("preset", "global_batch", "mesh", "data_axes", "fsdp_axes", "ema_decay", "grad_accum_steps",
               "remat_policy")


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)), e.g. "
                                  "configs/pi0_oxe_pretrain.py; override fields with --config.x=...", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology: v5e:16x16, v5p:4x4x4, v6e:8x8, v4:4x4x4, ...")
  flags.DEFINE_string("json", None, "Also write the report as JSON to this path ('-': stdout, instead of text).")
  flags.DEFINE_float("peak_flops", None, "Per-chip peak FLOP/s for the MFU estimate (default: the chip table).")
  flags.DEFINE_bool("plan", False, "Search remat policy x per-chip batch x mesh for the config on --topology and "
                    "list the candidates that fit, fastest projected step first (one compile per candidate).")
  flags.DEFINE_list("plan_batch", ["4", "8"], "Per-chip batch sizes the planner tries.")
  flags.DEFINE_list("plan_remat", list(PLAN_REMAT), "Remat policies the planner tries.")
  flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over the data-centre network (multi-slice): "
                       "a leading `slice` mesh axis, data parallel, is added unless the mesh has one.")
  # Without --config:
  flags.DEFINE_string("preset", "pi0", "Pi0Config preset (pi0_jax.model.PRESETS).")
  flags.DEFINE_integer("global_batch", 1024, "Global batch size.")
  flags.DEFINE_string("mesh", "data:1,fsdp:-1", "Mesh axes NAME:SIZE,...; one size may be -1.")
  flags.DEFINE_list("data_axes", None, "Axes the batch is split over (default: every mesh axis).")
  flags.DEFINE_list("fsdp_axes", None, "Axes parameters are sharded over (default: the axes named fsdp*).")
  flags.DEFINE_float("ema_decay", None, "EMA of the parameters (adds one parameter copy to the state).")
  flags.DEFINE_integer("grad_accum_steps", 1, "Micro-batches per step.")
  flags.DEFINE_string("remat_policy", None, "Override the preset's remat policy (a jax.checkpoint_policies name "
                      "or 'none').")


def main(argv) -> None:
  from absl import app, flags

  del argv
  f = flags.FLAGS
  if not f.topology:
    raise app.UsageError("--topology is required, e.g. --topology=v5e:16x16.")
  if f.plan:
    rows = _plan_from_flags(f)
    if f.json == "-":
      json.dump(rows, sys.stdout, indent=2)
      return
    print(format_plan(rows, f.topology, f.num_slices))
    if f.json:
      os.makedirs(os.path.dirname(os.path.abspath(f.json)), exist_ok=True)
      files.write_json(f.json, {"topology": f.topology, "num_slices": f.num_slices, "candidates": rows})
      print(f"wrote {f.json}")
    return
  report = _compile_from_flags(f)  # A bad setting raises ValueError before compiling (one line, see pi0_jax.cli).
  if f.json == "-":
    json.dump(report, sys.stdout, indent=2)
    print()
    return
  print(format_report(report))
  if f.json:
    os.makedirs(os.path.dirname(os.path.abspath(f.json)), exist_ok=True)
    files.write_json(f.json, report)
    print(f"wrote {f.json}")


def _plan_from_flags(f) -> list[dict]:
  from absl import app
  if f.config is None:
    raise app.UsageError("--plan needs --config (the planner varies the config's mesh, batch and remat).")
  return plan(f.config, topology=f.topology, num_slices=f.num_slices,
              per_chip_batches=[int(b) for b in f.plan_batch], remat_policies=f.plan_remat,
              progress=lambda line: print(line, flush=True))


def _compile_from_flags(f) -> dict:
  from absl import app

  config = f.config
  if config is not None:
    clashing = [name for name in _STANDALONE if f[name].present]
    if clashing:
      raise app.UsageError(f"--{', --'.join(clashing)} only apply without --config; with a config file, "
                           "override its fields instead, e.g. --config.global_batch=512.")
    return compile_config(config, topology=f.topology, num_slices=f.num_slices, peak_flops=f.peak_flops)
  overrides = {"remat_policy": f.remat_policy} if f.remat_policy else {}
  return compile_train_step(
      get_preset(f.preset, **overrides), topology=f.topology, mesh_axes=f.mesh, data_axes=f.data_axes,
      fsdp_axes=f.fsdp_axes, global_batch=f.global_batch, ema_decay=f.ema_decay,
      grad_accum_steps=f.grad_accum_steps, peak_flops=f.peak_flops, num_slices=f.num_slices)


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.aot`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Compile only (see the top of this module).
  jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])
  cli_lib.run(main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
