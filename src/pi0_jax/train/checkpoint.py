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
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
