"""Checks of the experiment config that need no devices or data, run before anything is built or compiled.

A bad value (say `checkpoint_every=0`) would otherwise surface as a ZeroDivisionError or a TensorFlow error
after minutes of compiling; here it is one message naming each bad field and what it should be.
"""

from __future__ import annotations

from typing import Any

# field -> smallest allowed value (integers).
_AT_LEAST = {"global_batch": 1, "total_steps": 1, "grad_accum_steps": 1, "log_every": 1, "checkpoint_every": 1,
             "keep_checkpoints": 1, "keep_every": 0}


def config_problems(config) -> list[str]:
  """Every problem found in `config` (a ConfigDict as the trainer reads it), one line each; [] if none."""
  problems = []
  for key, low in _AT_LEAST.items():
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      problems.append(f"config.{key}={value!r}: expected an integer >= {low}.")
  ema = config.get("ema_decay")
  if ema is not None and not 0.0 <= float(ema) < 1.0:
    problems.append(f"config.ema_decay={ema!r}: expected a float in [0, 1), or None for no EMA.")
  if config.get("preemption_sync", "auto") not in ("auto", "sync_point", "allreduce"):
    problems.append(f"config.preemption_sync={config.get('preemption_sync')!r}: expected 'auto', 'sync_point' or "
                    "'allreduce'.")
  frozen_dtype = (config.get("optimizer") or {}).get("frozen_dtype")
  if frozen_dtype not in (None, "bfloat16", "float32"):
    problems.append(f"config.optimizer.frozen_dtype={frozen_dtype!r}: expected 'bfloat16', 'float32' or None.")
  problems += _mesh_problems(config.get("mesh"), config.get("data_axes"), config.get("fsdp_axes"))
  init = config.get("init") or {}
  from pi0_jax.weights import INIT_SOURCES  # pylint: disable=g-import-not-at-top
  sources = [k for k in INIT_SOURCES if init.get(k)]
  if len(sources) > 1:
    problems.append(f"config.init: {sources} are set; a run starts from at most one of {list(INIT_SOURCES)}.")
  return problems


def check_config(config) -> None:
  """Raises one ValueError listing every problem of `config`."""
  problems = config_problems(config)
  if problems:
    raise ValueError("Bad config:\n  " + "\n  ".join(problems))


def _mesh_problems(mesh: Any, data_axes: Any, fsdp_axes: Any) -> list[str]:
  example = "e.g. --config.mesh=\"(('data', 2), ('fsdp', -1))\""
  try:
    pairs = [(str(name), size) for name, size in mesh]
  except (TypeError, ValueError):
    return [f"config.mesh={mesh!r}: expected (name, size) pairs, {example}."]
  problems = []
  bad = [p for p in pairs if isinstance(p[1], bool) or not isinstance(p[1], int) or (p[1] < 1 and p[1] != -1)]
  if bad or sum(size == -1 for _, size in pairs) > 1:
    problems.append(f"config.mesh={mesh!r}: sizes must be integers >= 1, with at most one -1 (the remaining "
                    f"devices), {example}.")
  names = [name for name, _ in pairs]
  for key, axes in (("data_axes", data_axes), ("fsdp_axes", fsdp_axes)):
    missing = [a for a in (axes or ()) if a not in names]
    if missing:
      problems.append(f"config.{key}={tuple(axes)!r} names {missing}, but the mesh axes are {tuple(names)}.")
  return problems
