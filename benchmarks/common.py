"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax


def time_fn(fn, *args, warmup: int = 2, repeats: int = 7) -> dict:
  """Median/min wall time of `fn(*args)` in ms, after warm-up, with block_until_ready."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": repeats}


def commit() -> str | None:
  """The git commit the benchmark ran on (None outside a checkout), "+dirty" if code differs (results aside)."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+dirty" if dirty else "")


def machine() -> dict:
  dev = jax.devices()[0]
  return {"commit": commit(), "platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "machine": platform.machine()}


def print_table(rows: list[dict], columns: list[str]) -> None:
  widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
  print(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("-|-".join("-" * w for w in widths))
  for r in rows:
    print(" | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
  if isinstance(v, float):
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
  return str(v)


def write_json(path: str, payload: dict) -> None:
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(payload, f, indent=2)
    print(f"wrote {path}")
