"""Bad-input checks, each naming the dataset, the episode and the key.

Three layers, cheapest first, so that a broken dataset fails before anything
compiles:
  1. `check_features`: the dataset's TFDS feature spec against its
     DatasetSpec (missing keys, wrong dtypes or shapes, raw instead of encoded
     images). Holds for every episode at once; costs nothing.
  2. `episode_problems`: the numbers of one episode (empty, shorter than the
     minimum length, NaN/inf in state or actions). Run over a whole split by
     the statistics scan (pi0_jax.data.stats), whose result is cached; the
     pipeline then raises for the first bad episode or, under
     `skip_bad_episodes`, drops exactly the listed episodes and reports how many.
  3. `assert_episode`: the same numeric checks inside the tf.data graph, as a
     backstop for data that no scan covered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from pi0_jax.cli import UserError


class DataError(UserError, ValueError):
  """A dataset does not fit its spec or the model; the message names dataset, episode and key."""


@dataclasses.dataclass(frozen=True)
class EpisodeProblem:
  """One thing wrong with one episode."""

  dataset: str
  split: str
  episode: int  # Position in the split as stored (the TFDS example index).
  tfds_id: str
  key: str
  problem: str

  def __str__(self) -> str:
    return (f"dataset {self.dataset!r}, split {self.split!r}, episode {self.episode} ({self.tfds_id}), "
            f"key {self.key!r}: {self.problem}")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def episode_index(tfds_id: str, shard_lengths: Sequence[int]) -> int:
  """Position of an example in its split from its TFDS id ('<name>-<split>.<fmt>-00001-of-00004__17')."""
  try:
    file_part, index = tfds_id.rsplit("__", 1)
    shard = int(file_part.rsplit("-of-", 1)[0].rsplit("-", 1)[1])
    return int(sum(shard_lengths[:shard])) + int(index)
  except (ValueError, IndexError):
    return -1  # An unfamiliar id format: the id itself still names the episode.


# --- 1. Feature spec --------------------------------------------------------------------------------


def _lookup(features, path: str):
  from pi0_jax.data.rlds import _get  # pylint: disable=g-import-not-at-top
  try:
    return _get(features, path)
  except (KeyError, TypeError):
    return None


def _describe(feature) -> tuple[tuple[int | None, ...], np.dtype, str]:
  import tensorflow as tf
  import tensorflow_datasets as tfds
  kind = type(feature).__name__
  if isinstance(feature, tf.TensorSpec):  # After a transform: [T, ...] per episode.
    dtype = np.dtype(object) if feature.dtype == tf.string else np.dtype(feature.dtype.as_numpy_dtype)
    return tuple(feature.shape[1:]), dtype, "tensor"
  if isinstance(feature, tfds.features.Text):
    return (), np.dtype(object), kind
  return tuple(feature.shape), np.dtype(feature.np_dtype), kind


def check_features(dataset: str, step_features, spec, *, max_dim: int, transformed=None) -> None:
  """Raises DataError listing every key of `spec` that the step features lack or hold in the wrong form.

  step_features: the FeaturesDict of one step (`builder.info.features["steps"].feature`).
  max_dim: the model's action_dim; state and action must fit in it.
  transformed: the steps' element spec after the spec's transform (rlds.transformed_steps_spec); state,
  action and instruction keys are looked up there when given (cameras always in the stored features).
  """
  import tensorflow_datasets as tfds
  errors = []
  where = f"dataset {dataset!r}, every episode"

  def err(key, msg):
    errors.append(f"{where}, key {key!r}: {msg}")

  for slot, key in spec.cameras:
    if key is None:
      continue
    path = f"observation/{key}"
    feature = _lookup(step_features, path)
    if feature is None:
      err(f"steps/{path}", f"missing (camera slot {slot!r}); step observation keys are "
          f"{sorted(step_features['observation'].keys()) if _lookup(step_features, 'observation') else 'absent'}")
      continue
    shape, dtype, kind = _describe(feature)
    if not isinstance(feature, tfds.features.Image):
      err(f"steps/{path}", f"a {kind} {shape} {dtype}, expected an encoded image (tfds.features.Image): the "
          "pipeline keeps frames encoded until after the shuffle")
    elif dtype != np.uint8 or len(shape) != 3 or shape[-1] != 3:
      err(f"steps/{path}", f"image {shape} {dtype}, expected [height, width, 3] uint8")

  after = step_features if transformed is None else transformed
  for group, keys, want in (("state", [f"observation/{k}" for k in spec.state_keys], spec.state_dim),
                            ("action", [spec.action_key], spec.action_dim)):
    total, ok = 0, True
    for path in keys:
      feature = _lookup(after, path)
      if feature is None:
        err(f"steps/{path}", f"missing ({group})")
        ok = False
        continue
      shape, dtype, kind = _describe(feature)
      if dtype.kind != "f":
        err(f"steps/{path}", f"dtype {dtype}, expected a float ({group})")
        ok = False
      if len(shape) > 1 or any(d is None for d in shape):
        err(f"steps/{path}", f"shape {shape}, expected a scalar or a fixed-size vector per step ({group})")
        ok = False
        continue
      total += int(np.prod(shape)) if shape else 1
    if ok and want is not None and total != want:
      err("steps/" + "+".join(keys), f"{group} has {total} dims, expected {want} (DatasetSpec.{group}_dim)")
    if ok and total > max_dim:
      err("steps/" + "+".join(keys), f"{group} has {total} dims, more than the model's action_dim {max_dim}")

  if spec.instruction_key is not None:
    feature = _lookup(after, spec.instruction_key)
    if feature is None:
      err(f"steps/{spec.instruction_key}", "missing (instruction); set DatasetSpec.instruction_key=None and a "
          "fixed prompt if the dataset has none")
    elif not isinstance(feature, tfds.features.Text) and np.dtype(_describe(feature)[1]).kind not in "OSU":
      err(f"steps/{spec.instruction_key}", f"a {_describe(feature)[2]}, expected a string (tfds.features.Text)")
  if errors:
    raise DataError("Dataset does not fit its DatasetSpec:\n  " + "\n  ".join(errors))


def check_standardized_spec(dataset: str, element_spec: Mapping[str, Any], *, state_dim: int | None,
                            action_dim: int | None, max_dim: int) -> None:
  """After the spec's transform: state and actions must be [T, D] float32 with a static D that fits."""
  errors = []
  for key, want in (("state", state_dim), ("actions", action_dim)):
    shape = element_spec[key].shape
    d = shape[-1] if shape.rank == 2 else None
    if shape.rank != 2 or d is None:
      errors.append(f"dataset {dataset!r}, every episode, key {key!r}: shape {shape} after the spec's transform, "
                    "expected [time, dims] with a fixed number of dims")
    elif want is not None and d != want:
      errors.append(f"dataset {dataset!r}, every episode, key {key!r}: {d} dims after the spec's transform, "
                    f"expected {want}")
    elif d > max_dim:
      errors.append(f"dataset {dataset!r}, every episode, key {key!r}: {d} dims, more than the model's "
                    f"action_dim {max_dim}")
  if errors:
    raise DataError("\n".join(errors))


# --- 2. Episode contents (numpy, during the statistics scan) -----------------------------------------


def episode_problems(state: np.ndarray, actions: np.ndarray, *, min_length: int) -> list[tuple[str, str]]:
  """(key, problem) pairs for one standardised episode: state [T, S], actions [T, A]."""
  length = int(actions.shape[0])
  if length == 0:
    return [("steps", "empty episode (0 steps)")]
  problems = []
  if length < min_length:
    problems.append(("steps", f"{length} steps, fewer than the minimum {min_length} (data.min_episode_length)"))
  for key, x in (("state", state), ("actions", actions)):
    bad = ~np.isfinite(x)
    if bad.any():
      t, d = np.argwhere(bad)[0]
      problems.append((key, f"{int(bad.sum())} non-finite values, first {x[t, d]} at step {t}, dim {d}"))
  return problems


# --- 3. Inside the graph ----------------------------------------------------------------------------


def assert_episode(episode: dict, dataset: str, min_length: int) -> list:
  """tf.debugging.Assert ops for the numeric checks; the failing message carries the episode's tfds_id.

  (TF escapes quotes in assertion data, so these messages use none.)
  """
  import tensorflow as tf
  length = tf.shape(episode["actions"])[0]
  eid = episode["episode_id"]
  where = f"dataset {dataset}, episode"
  return [
      tf.debugging.Assert(length >= max(min_length, 1),
                          [where, eid, f"key steps: fewer than {max(min_length, 1)} steps (empty or too short); set "
                           "data.skip_bad_episodes=True to skip such episodes"]),
      tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(episode["state"])), [where, eid, "key state: NaN or inf"]),
      tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(episode["actions"])),
                          [where, eid, "key actions: NaN or inf"]),
  ]
