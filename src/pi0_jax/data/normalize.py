"""Normalising state and actions with per-dataset statistics (SPEC's norm_stats format).

Statistics are per dimension over the unpadded data (see pi0_jax.data.stats):
`{"mean", "std", "q01", "q99", "min", "max", "count"}` for "state" and for
"actions". Two modes:

  zscore    (x - mean) / (std + 1e-6), unclipped (pi0's default).
  quantile  2 * (x - q01) / (q99 - q01 + 1e-6) - 1, clipped to [-1, 1]: q01..q99 map onto [-1, 1] and the
            outer 2% are clamped, so a rare outlier cannot produce a huge target.

Dimensions flagged in `skip` (e.g. a binary gripper) pass through unchanged in both modes. Zero-padding to
the model's action_dim happens after normalisation, so padded dims are exactly 0.

The TF functions run inside the input pipeline; the numpy ones are for policies at inference time.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

EPS = 1e-6
MODES = ("zscore", "quantile")


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"norm_mode {mode!r}: expected one of {MODES}.")


def skip_mask(dim: int, unnormalized_dims) -> np.ndarray:
  """bool [dim], True on the dims that stay unnormalised."""
  mask = np.zeros(dim, bool)
  for d in unnormalized_dims:
    if not -dim <= d < dim:
      raise ValueError(f"unnormalized dim {d} is out of range for {dim} dims.")
    mask[d] = True
  return mask


def normalize_np(x: np.ndarray, stats: Mapping[str, np.ndarray], mode: str, skip=None) -> np.ndarray:
  _check_mode(mode)
  x = np.asarray(x, np.float32)
  if mode == "zscore":
    y = (x - np.asarray(stats["mean"], np.float32)) / (np.asarray(stats["std"], np.float32) + EPS)
  else:
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    y = np.clip(2 * (x - q01) / (q99 - q01 + EPS) - 1, -1, 1)
  return y if skip is None else np.where(skip, x, y).astype(np.float32)


def unnormalize_np(y: np.ndarray, stats: Mapping[str, np.ndarray], mode: str, skip=None) -> np.ndarray:
  """Inverse of normalize_np (exact for z-score; for quantile mode, exact inside q01..q99)."""
  _check_mode(mode)
  y = np.asarray(y, np.float32)
  if mode == "zscore":
    x = y * (np.asarray(stats["std"], np.float32) + EPS) + np.asarray(stats["mean"], np.float32)
  else:
    q01, q99 = np.asarray(stats["q01"], np.float32), np.asarray(stats["q99"], np.float32)
    x = (y + 1) / 2 * (q99 - q01 + EPS) + q01
  return x if skip is None else np.where(skip, y, x).astype(np.float32)


def normalize_tf(x, stats: Mapping[str, np.ndarray], mode: str, skip=None):
  """The same as normalize_np on a tf.Tensor [..., D]."""
  import tensorflow as tf
  _check_mode(mode)
  c = lambda k: tf.constant(np.asarray(stats[k], np.float32))  # noqa: E731
  if mode == "zscore":
    y = (x - c("mean")) / (c("std") + EPS)
  else:
    y = tf.clip_by_value(2 * (x - c("q01")) / (c("q99") - c("q01") + EPS) - 1, -1.0, 1.0)
  if skip is None or not np.any(skip):
    return y
  return tf.where(tf.constant(np.asarray(skip, bool)), x, y)
