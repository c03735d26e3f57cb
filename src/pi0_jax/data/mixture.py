"""Mixing datasets: pi0's n^0.43 weights and the seeded frame sampler.

Each dataset's weight is n ** exponent (n = its number of training frames,
exponent 0.43 as in pi0), or given explicitly; weights are normalised to sum
to 1. `mix` draws each next frame from dataset i with probability w_i through
`tf.data.Dataset.sample_from_datasets` with a fixed seed, so the order is
reproducible and, being part of the tf.data graph, saved with the iterator.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_EXPONENT = 0.43


def mixture_weights(counts: Sequence[float], exponent: float = DEFAULT_EXPONENT,
                    explicit: Sequence[float | None] | None = None) -> np.ndarray:
  """Normalised weights: explicit ones where given, else count ** exponent, relative to the others'.

  Mixing explicit and count-based weights treats both as unnormalised: an explicit 2.0 next to a
  count-based 10000 ** 0.43 = 52.5 gets 2 / 54.5 of the frames.
  """
  counts = np.asarray(counts, np.float64)
  if counts.ndim != 1 or not len(counts):
    raise ValueError(f"mixture_weights: expected one count per dataset, got {counts!r}.")
  if np.any(counts <= 0):
    raise ValueError(f"mixture_weights: every dataset needs a positive frame count, got {counts.tolist()}.")
  w = counts ** float(exponent)
  if explicit is not None:
    if len(explicit) != len(counts):
      raise ValueError(f"mixture_weights: {len(explicit)} explicit weights for {len(counts)} datasets.")
    w = np.array([w_i if e is None else float(e) for w_i, e in zip(w, explicit)])
  if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
    raise ValueError(f"mixture_weights: weights must be finite, non-negative and not all zero, got {w.tolist()}.")
  return w / w.sum()


def mix(datasets: Sequence, weights: Sequence[float], seed: int, *, stop_on_empty_dataset: bool = False):
  """One tf.data stream drawing each element from datasets[i] with probability weights[i] (seeded)."""
  import tensorflow as tf
  if len(datasets) != len(weights):
    raise ValueError(f"mix: {len(datasets)} datasets but {len(weights)} weights.")
  if len(datasets) == 1:
    return datasets[0]
  return tf.data.Dataset.sample_from_datasets(list(datasets), weights=[float(w) for w in weights], seed=int(seed),
                                              stop_on_empty_dataset=stop_on_empty_dataset)
