"""AOT memory and FLOPs of the full-size pi0 train step on TPU pod topologies (compiled on this CPU host).

Each case compiles the real step (3 cameras, H = 50, 48 prompt tokens, AdamW, EMA, remat from the preset)
for a TPU topology with libtpu's compile-only devices; see pi0_jax.aot. Nothing runs on a TPU: memory is
the compiler's per-chip plan, FLOPs are counted from the traced step, and XLA's own cost analysis is
shown beside them (it counts each scanned layer once). A full-size compile takes minutes on 2 CPU cores.

  python benchmarks/aot.py                           # the default cases below
  python benchmarks/aot.py --cases=v5e_256,v5p_64 --out=benchmarks/results/aot.json

The JSON keeps the results of cases not rerun (same preset and EMA), so cases can be compiled one at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time

# Before jax is imported (pi0_jax.aot sets libtpu's variables itself): compile only, never grab a local chip.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name: (topology, mesh, global batch, grad accum, preset overrides). Two FSDP axes, so SigLIP's 1152- and
# 4304-wide weights split over all chips (see pi0_jax.train.sharding).
CASES = {
    # The pre-training config: v5e-256, 4 samples per chip.
    "v5e_256": ("v5e:16x16", "data:1,fsdp:16,fsdp2:16", 1024, 1, {}),
    # v5p-128 (64 chips), 4 samples per chip.
    "v5p_64": ("v5p:4x4x4", "data:1,fsdp:8,fsdp2:8", 256, 1, {}),
    # Trillium: v6e-256 at the same batch as the v5e pod.
    "v6e_256": ("v6e:16x16", "data:1,fsdp:16,fsdp2:16", 1024, 1, {}),
    # Headroom on v5e-256: 4x the batch (16 per chip).
    "v5e_256_b4096": ("v5e:16x16", "data:1,fsdp:16,fsdp2:16", 4096, 1, {}),
    # v5e-256 with 4 micro-batches of 256 (1 sample per chip each).
    "v5e_256_accum4": ("v5e:16x16", "data:1,fsdp:16,fsdp2:16", 1024, 4, {}),
    # A small slice: v5e-16 (4x4), 4 samples per chip; the whole state over 16 chips.
    "v5e_16": ("v5e:4x4", "data:1,fsdp:16", 64, 1, {}),
    # v5e-256 without rematerialisation: every activation kept.
    "v5e_256_noremat": ("v5e:16x16", "data:1,fsdp:16,fsdp2:16", 1024, 1, {"remat_policy": "none"}),
    # v5e-256 keeping the matmul outputs (less recomputation than nothing_saveable).
    "v5e_256_dots": ("v5e:16x16", "data:1,fsdp:16,fsdp2:16", 1024, 1,
                     {"remat_policy": "dots_with_no_batch_dims_saveable"}),
}

_CASES = flags.DEFINE_list("cases", ["v5e_256", "v5p_64", "v6e_256"], f"Cases to compile, of {sorted(CASES)}.")
_PRESET = flags.DEFINE_string("preset", "pi0", "Pi0Config preset.")
_EMA = flags.DEFINE_float("ema_decay", 0.99, "EMA decay (the EMA copy is part of the state); <= 0 turns it off.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/aot.json", "JSON output ('' to skip).")

COLUMNS = ["case", "topology", "chips", "mesh", "batch", "per_chip", "remat", "state_GiB", "args_GiB", "temp_GiB",
           "code_GiB", "total_GiB", "hbm_GiB", "fits", "TFLOP_chip", "xla_TFLOP_chip", "optimal_s", "s_at_peak",
           "mfu_est", "step_s_est", "compile_s"]


def row(name: str, r: dict) -> dict:
  if "error" in r:
    return {"case": name, "fits": r["error"][:60]}
  m, gib = r["memory"], 2**30

  def size(key):  # Absent when the compiler ran out of HBM (temporaries then come from its message).
    return m[key] / gib if key in m else "-"

  return {
      "case": name, "topology": r["topology"], "chips": r["num_chips"],
      "mesh": "x".join(str(v) for v in r["mesh"].values()), "batch": r["global_batch"],
      "per_chip": r["per_chip_batch"], "remat": r["model"]["remat_policy"],
      "state_GiB": size("state_bytes"), "args_GiB": size("argument_bytes"), "temp_GiB": size("temp_bytes"),
      "code_GiB": size("generated_code_bytes"), "total_GiB": size("total_bytes"), "hbm_GiB": size("hbm_bytes"),
      "fits": m["fits"] if "compiler_error" not in m else "no (compiler OOM)",
      "TFLOP_chip": r["flops_per_chip"] / 1e12,
      "xla_TFLOP_chip": r["xla_flops_per_chip"] / 1e12 if r["xla_flops_per_chip"] else "-",
      "optimal_s": (r["optimal_seconds"] if r["optimal_seconds"] else
                    f"n/a ({r['optimal_seconds_raw']:.3g})" if r["optimal_seconds_raw"] is not None else "-"),
      "s_at_peak": r["seconds_at_peak"], "mfu_est": r["mfu_estimate"] if r["mfu_estimate"] else "n/a",
      "step_s_est": r["step_seconds_estimate"] if r["step_seconds_estimate"] else "n/a",
      "compile_s": r["compile_s"],
  }


def main(argv):
  del argv
  from pi0_jax import aot
  from pi0_jax.model import get_preset
  import common

  unknown = [c for c in _CASES.value if c not in CASES]
  if unknown:
    raise app.UsageError(f"unknown cases {unknown}; known: {sorted(CASES)}")
  ema = _EMA.value if _EMA.value and _EMA.value > 0 else None
  # Cases accumulate in the JSON: a run replaces the entries of the cases it compiles and keeps the others
  # (a full-size compile takes minutes; rerunning one case should not cost all of them).
  results = {}
  if _OUT.value and os.path.exists(_OUT.value):
    with open(_OUT.value) as f:
      previous = json.load(f)
    if previous.get("preset") == _PRESET.value and previous.get("ema_decay") == ema:
      results = previous.get("results", {})
  for name in _CASES.value:
    topology, mesh, batch, accum, overrides = CASES[name]
    print(f"--- {name}: {topology}, mesh {mesh}, global batch {batch} ...", flush=True)
    t0 = time.perf_counter()
    try:
      r = aot.compile_train_step(get_preset(_PRESET.value, **overrides), topology=topology, mesh_axes=mesh,
                                 global_batch=batch, grad_accum_steps=accum, ema_decay=ema)
    except Exception as e:  # One failing case (e.g. out of HBM at compile) should not lose the others.
      print(f"{name} failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
      results[name] = {"error": f"{type(e).__name__}: {e}"[:5000], "wall_s": time.perf_counter() - t0}
      continue
    r["wall_s"] = time.perf_counter() - t0
    print(aot.format_report(r), flush=True)
    results[name] = r
    # Write as we go: the whole run takes a while.
    common.write_json(_OUT.value, {"machine": common.machine(), "preset": _PRESET.value, "ema_decay": ema,
                                   "results": results})
  print()
  common.print_table([row(name, r) for name, r in results.items()], COLUMNS)
  common.write_json(_OUT.value, {"machine": common.machine(), "preset": _PRESET.value, "ema_decay": ema,
                                 "results": results})


if __name__ == "__main__":
  app.run(main)
