"""Trajectory transforms: whole-episode operations that are index gathers (plus zero-padding of dims).

They run on standardised, normalised episodes (leading time axis T) before
the episodes are flattened into frames, so every frame carries its action
chunk and masks with it:

  actions          float32 [T, H, A]  actions t .. t+H-1, dims zero-padded to A
  action_pad_mask  bool [T, H]        True for t+h < T; False past the episode end
  action_dim_mask  bool [T, A]        True on the dataset's real action dims
  state            float32 [T, A]     zero-padded the same way

Past the end of the episode the chunk repeats the last action (a plain clamped
gather), and the pad mask marks those steps False so the loss ignores them.
"""

from __future__ import annotations

import tensorflow as tf


def chunk_indices(length, horizon: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Gather indices [T, H] (clamped to the last step) and the pad mask [T, H] (True where t + h < T)."""
  steps = tf.range(length, dtype=tf.int32)[:, None] + tf.range(horizon, dtype=tf.int32)[None, :]
  return tf.minimum(steps, tf.maximum(length - 1, 0)), steps < length


def chunk_actions(actions: tf.Tensor, horizon: int) -> tuple[tf.Tensor, tf.Tensor]:
  """actions [T, A] -> (chunks [T, H, A], action_pad_mask [T, H])."""
  index, pad_mask = chunk_indices(tf.shape(actions)[0], horizon)
  return tf.gather(actions, index), pad_mask


def pad_dims(x: tf.Tensor, dim: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Zero-pads the last axis of x [..., D] to `dim`; returns (padded, dim_mask bool [dim])."""
  d = x.shape[-1]
  if d is None or d > dim:
    raise ValueError(f"pad_dims: last axis of size {d} does not fit in {dim}.")
  padding = [[0, 0]] * (x.shape.rank - 1) + [[0, dim - d]]
  return tf.pad(x, padding), tf.constant([True] * d + [False] * (dim - d))


def subsample_indices(length, max_frames: int, seed) -> tf.Tensor:
  """Sorted indices of at most `max_frames` distinct steps, uniformly at random (stateless, seeded)."""
  keys = tf.random.stateless_uniform([length], seed=seed)
  chosen = tf.math.top_k(keys, k=tf.minimum(length, max_frames)).indices
  return tf.sort(chosen)


def episode_seed(episode_id: tf.Tensor, seed: int) -> tf.Tensor:
  """A stateless seed [2] from the episode's id, so an episode's choices do not depend on read order."""
  return tf.stack([tf.constant(seed, tf.int64), tf.strings.to_hash_bucket_fast(episode_id, 2**62)])


def to_frames(episode: dict, *, horizon: int, action_dim: int, max_frames: int | None = None,
              seed: int = 0) -> dict:
  """A standardised (and normalised) episode -> per-step frames with action chunks, padded dims and masks.

  Returns the same keys as the input minus episode_id, plus action_pad_mask and action_dim_mask, all with
  a leading time axis (fewer steps when `max_frames` subsamples a long episode).
  """
  length = tf.shape(episode["actions"])[0]
  chunks, pad_mask = chunk_actions(episode["actions"], horizon)
  actions, action_dim_mask = pad_dims(chunks, action_dim)
  state, _ = pad_dims(episode["state"], action_dim)
  frames = {
      "images": episode["images"],
      "image_masks": episode["image_masks"],
      "state": state,
      "actions": actions,
      "action_pad_mask": pad_mask,
      "action_dim_mask": tf.tile(action_dim_mask[None], [length, 1]),
      "prompt": episode["prompt"],
  }
  if max_frames is not None:
    keep = subsample_indices(length, max_frames, episode_seed(episode["episode_id"], seed))
    frames = tf.nest.map_structure(lambda x: tf.gather(x, keep), frames)
  return frames
