"""Orbax checkpoints of the train state, with the data-iterator state beside it.

Layout of a workdir:
  checkpoints/<step>/state     the train state (pi0_jax.train.step), sharded arrays
  checkpoints/<step>/meta      JSON: step, data-iterator state, time
  config.json                  the resolved experiment config (written by process 0)
  assets/                      norm_stats.json, tokenizer.model (written once, by process 0)

Orbax writes each step into a temporary directory and renames it when complete,
so `latest_step()` only ever sees finished checkpoints: a run killed mid-save
resumes from the previous one. Saves are asynchronous; `wait()` blocks until
the last one is on disk.

A finished checkpoint can still be damaged later (a truncated array file, a lost
metadata file or item). `restore_latest_good()` then logs one line naming the
step, the file and the reason, renames that step's directory to
`<step>.damaged` (never deleted: it may be worth a look), and falls back to the
previous checkpoint.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# Files every complete checkpoint holds (Orbax's own metadata); without them a restore may silently misread.
_REQUIRED = ("_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")


class Checkpoints:
  """Save and restore train states under `<workdir>/checkpoints`.

  keep: the last `keep` checkpoints are kept, plus every `keep_every`-th step (0: none).
  """

  def __init__(self, workdir: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True):
    self.directory = os.path.join(resolve_workdir(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, create=True, enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(timeout_secs=3600))
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, meta: dict[str, Any], *, force: bool = True) -> bool:
    """Starts an async save of `state` and the JSON-able `meta` at `step`."""
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state: dict, step: int | None = None) -> tuple[dict, dict]:
    """Restores onto the shardings of `abstract_state` (ShapeDtypeStructs with `.sharding`), any mesh."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No complete checkpoint under {self.directory}.")
    out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                             meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_latest_good(self, abstract_state: dict) -> tuple[int, dict, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores; damaged newer ones are moved aside.

    None when there is no checkpoint; an error when there were some but none restores. Every process takes
    the same decision (the failure flags are all-gathered), and process 0 alone renames directories.
    """
    damaged = []
    while (step := self.latest_step()) is not None:
      mismatch = None
      try:
        problem = self._missing_file(step)
        if problem is None:
          mismatch = _structure_mismatch(epath.Path(self.directory, str(step), "state"), abstract_state)
          if mismatch is None:
            state, meta = self.restore(abstract_state, step)
      except Exception as e:  # pylint: disable=broad-except
        problem = _describe(e, os.path.join(self.directory, str(step)))
      if problem is None and mismatch is not None:  # Another config, not damage: leave the checkpoint in place.
        raise ValueError(f"Checkpoint step {step} in {self.directory} holds another train state than this config "
                         f"builds ({mismatch}). Resume with the config it was written with, or use a new workdir.")
      if not _any_process(problem is not None):
        return step, state, meta
      problem = problem or "failed on another process"
      aside = self._move_aside(step)
      logging.warning("damaged checkpoint: step %d, %s; moved it to %s and trying the previous one.", step,
                      problem, aside)
      damaged.append(step)
    if damaged:
      raise FileNotFoundError(f"No checkpoint under {self.directory} restores: steps {damaged} are damaged (moved "
                              "aside as <step>.damaged). Delete or fix them to start from scratch.")
    return None

  def _missing_file(self, step: int) -> str | None:
    for name in _REQUIRED:
      path = epath.Path(self.directory, str(step), name)
      if not path.exists():
        return f"file {path}: missing"
    return None

  def _move_aside(self, step: int) -> str:
    source = epath.Path(self.directory, str(step))
    target = epath.Path(self.directory, f"{step}.damaged")
    n = 1
    while target.exists():
      target, n = epath.Path(self.directory, f"{step}.damaged{n}"), n + 1
    _barrier(f"pi0_damaged_{step}_read")
    if jax.process_index() == 0:
      source.rename(target)
    _barrier(f"pi0_damaged_{step}_moved")
    self.manager.reload()
    return str(target)

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def resolve_workdir(workdir: str) -> str:
  """An absolute local path, or a URL (gs://bucket/run: Orbax, TensorBoard and tf.data read and write those)."""
  return workdir if "://" in workdir else os.path.abspath(workdir)


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings (what `restore` places arrays onto)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def timestamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _structure_mismatch(state_dir: epath.Path, abstract_state: dict) -> str | None:
  """How the arrays saved in `state_dir` differ from `abstract_state` (paths and shapes), or None."""
  with ocp.StandardCheckpointer() as reader:
    saved = reader.metadata(state_dir).item_metadata
  have, want = ({_path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
                for tree in (saved, abstract_state))
  if have == want:
    return None
  missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
  shapes = [f"{k}: saved {have[k]}, wanted {want[k]}" for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
  parts = [f"{what} {items[:4]}{' ...' if len(items) > 4 else ''}" for what, items in
           (("not saved:", missing), ("not expected:", extra), ("other shapes:", shapes)) if items]
  return "; ".join(parts)


def _path_name(path) -> str:
  """'opt_state/1/mu/...': named tuples (optax states) are dicts in Orbax's metadata, so keys are compared plainly."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _describe(error: BaseException, step_dir: str) -> str:
  """'file F: reason' from an Orbax/TensorStore error chain (its innermost message names the file best)."""
  chain = []
  while error is not None and len(chain) < 10:
    chain.append(error)
    error = error.__cause__ or error.__context__
  messages = [str(e).split("\n")[0].split(" [tensorstore_spec")[0] for e in chain]
  reason = messages[-1] or type(chain[-1]).__name__
  paths = re.findall(r"(/[^\s\"':,]+)", " ".join(messages))
  inner = re.search(r'Error \w+ "([^"]+)" in OCDBT database at local file "([^"]+)"', messages[-1])
  if inner:
    where = f"{inner.group(2).rstrip('/')} (OCDBT entry {inner.group(1)}: array/chunk)"
  else:
    where = next((p for p in paths if p.startswith(step_dir)), step_dir)
  if len(reason) > 300:
    reason = reason[:300] + "..."
  return f"file {where}: {type(chain[-1]).__name__}: {reason}"


def _any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.max(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
