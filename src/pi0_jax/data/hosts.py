"""Processes and devices: each process's share of the batch, and host batches -> global sharded arrays.

Each process (host) reads a disjoint part of every dataset (pi0_jax.data.rlds.process_split) and builds a
local batch of global_batch / process_count examples. `make_global_batch` assembles those local batches
into jax.Arrays whose leading axis is split over the mesh's data axes, with
`jax.make_array_from_process_local_data`: no host ever holds the global batch.
"""

from __future__ import annotations

from typing import Any, Sequence


def process_info(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
  """(index, count): JAX's, unless given (tests simulate several processes in one)."""
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  return int(process_index), int(process_count)


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by the process count {process_count}.")
  return global_batch // process_count


def make_global_batch(host_batch: Any, mesh, data_axes: Sequence[str]) -> Any:
  """Every leaf of this process's batch [B_local, ...] -> a global jax.Array [B_local * processes, ...]."""
  import jax
  from pi0_jax.train.sharding import batch_sharding  # pylint: disable=g-import-not-at-top
  sharding = batch_sharding(mesh, data_axes)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host_batch)
