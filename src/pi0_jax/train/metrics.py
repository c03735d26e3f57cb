"""Training metrics: JSON lines, TensorBoard, a console progress bar, MFU.

Only process 0 writes; other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard event files under `<workdir>/tensorboard`."""

  def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    jsonl_dir = workdir
    if "://" in workdir:  # Object stores do not append: the JSON lines go to a local mirror, TensorBoard remote.
      jsonl_dir = os.path.join(os.path.abspath("pi0_metrics"), workdir.replace("://", "/").strip("/"))
      logging.warning("Workdir %s is remote: metrics.jsonl is written to %s (TensorBoard events go to the "
                      "workdir).", workdir, jsonl_dir)
    os.makedirs(jsonl_dir, exist_ok=True)
    self._jsonl = open(os.path.join(jsonl_dir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        import tensorboard  # noqa: F401  (tf.summary needs it)
        import tensorflow as tf  # Only the summary writer; no TF ops on the training path.
        tf.config.set_visible_devices([], "GPU")
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
        self._tf = tf
      except ImportError as e:
        logging.warning("No TensorBoard event files (%s); metrics go to %s only.", e,
                        os.path.join(workdir, "metrics.jsonl"))
        self._tb = None

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "time": time.time(), **{k: _to_float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      with self._tb.as_default():
        for k, v in row.items():
          if k not in ("step", "time") and v is not None and math.isfinite(v):
            self._tf.summary.scalar(k, v, step=int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _to_float(v) -> float | None:
  try:
    return float(v)
  except (TypeError, ValueError):
    return None


def _dot_flops(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  # A multiply and an add per output element (batch x lhs free x rhs free) and contracted index.
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  out_feature_dim = dn.rhs_spec[0]
  # Each output element: a dot over (input features / groups) x kernel window = rhs size / output features.
  per_output = math.prod(rhs) / rhs[out_feature_dim]
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output


def _sub_jaxprs(value):
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def jaxpr_matmul_flops(jaxpr) -> float:
  """Matmul FLOPs (dot_general, convolutions) of a (closed) jaxpr, nested calls included.

  A scan's body counts `length` times, a cond its most expensive branch, a while loop's body once (its
  trip count is not static; the train step has none). Shapes are global (unsharded) ones.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max((jaxpr_matmul_flops(b) for b in eqn.params["branches"]), default=0.0)
    else:  # pjit, checkpoint (remat), custom_jvp/vjp calls, while, ...: every nested jaxpr once.
      for value in eqn.params.values():
        for sub in _sub_jaxprs(value):
          total += jaxpr_matmul_flops(sub)
  return total



def _best_seconds(fn, x, repeats: int) -> float:
  """Fastest of `repeats` runs of jitted `fn(x)` after one warm-up run."""
  fn(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return best


def measured_matmul_peak(size: int = 1024, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul on one local device: the CPU's practical peak."""
  return 2 * size**3 / _best_seconds(jax.jit(lambda a: a @ a), jnp.ones((size, size), dtype), repeats)


def measured_memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
  """Bytes/s read + written by a jitted elementwise pass over `mib` MiB of f32 on one local device."""
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  return 2 * x.nbytes / _best_seconds(jax.jit(lambda a: a * 1.5 + 1.0), x, repeats)


def device_peak_flops(configured: float | None) -> tuple[float, str]:
  """Per-device peak FLOP/s: the configured value, a known accelerator's, or a measured CPU matmul peak."""
  if configured:
    return float(configured), "config"
  kind = jax.devices()[0].device_kind.lower()
  known = {"v4": 275e12, "v5 lite": 197e12, "v5e": 197e12, "v5p": 459e12, "v6 lite": 918e12, "v6e": 918e12,
           "h100": 989e12, "h200": 989e12, "a100": 312e12}
  for key, peak in known.items():
    if key in kind:
      return peak, f"table ({kind})"
  return measured_matmul_peak(), "measured matmul"
