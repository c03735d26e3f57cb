"""Small synthetic RLDS datasets written with TFDS, for tests and benchmarks.

  dir = write_rlds(tmp_path, "pi0_synthetic_a", {"train": [episode, ...], "val": [...]})

An episode is a dict of per-step arrays with a leading time axis T:
  {"observation": {key: array [T, ...]}, "action": array [T, ...] or {key: array [T, ...]},
   "language_instruction": str or [str] * T}
Features are inferred from the first episode: uint8 [T, h, w, 3] arrays become encoded images
(tfds.features.Image, PNG), other arrays tensors of their dtype, strings text. The RLDS bookkeeping
(reward, discount, is_first, is_last, is_terminal) is added. Episodes are stored in the order given
(shuffling disabled), so an episode's index in the list is its index in the split.

Name datasets so that they cannot collide with the TFDS catalog (e.g. a "pi0_" prefix).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np


def _feature(x: np.ndarray):
  import tensorflow_datasets as tfds
  if x.dtype.kind in "OSU":
    return tfds.features.Text()
  if x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3:
    return tfds.features.Image(shape=x.shape[1:], encoding_format="png")
  return tfds.features.Tensor(shape=x.shape[1:], dtype=x.dtype)


def _features(episode: Mapping[str, Any]):
  import tensorflow_datasets as tfds
  step = {"observation": tfds.features.FeaturesDict({k: _feature(np.asarray(v))
                                                     for k, v in episode["observation"].items()})}
  for k, v in episode.items():
    if k != "observation":  # A dict (e.g. RT-X's action) becomes a FeaturesDict.
      step[k] = (tfds.features.FeaturesDict({kk: _feature(np.asarray(vv)) for kk, vv in v.items()})
                 if isinstance(v, Mapping) else _feature(np.asarray(_per_step(v, episode))))
  for k in ("reward", "discount"):
    step[k] = tfds.features.Scalar(dtype=np.float32)
  for k in ("is_first", "is_last", "is_terminal"):
    step[k] = tfds.features.Scalar(dtype=np.bool_)
  return tfds.features.FeaturesDict({
      "steps": tfds.features.Dataset(step),
      "episode_metadata": tfds.features.FeaturesDict({"episode_index": tfds.features.Scalar(dtype=np.int32)}),
  })


def _length(episode) -> int:
  action = episode["action"]
  return len(np.asarray(next(iter(action.values())) if isinstance(action, Mapping) else action))


def _per_step(value, episode):
  if isinstance(value, str):
    return np.array([value] * _length(episode), dtype=object)
  return np.asarray(value)


def _steps(episode) -> list[dict]:
  n = _length(episode)
  obs = {k: np.asarray(v) for k, v in episode["observation"].items()}
  rest = {k: v if isinstance(v, Mapping) else _per_step(v, episode) for k, v in episode.items()
          if k != "observation"}
  pick = lambda v, t: {k: np.asarray(x)[t] for k, x in v.items()} if isinstance(v, Mapping) else v[t]  # noqa: E731
  return [{"observation": {k: v[t] for k, v in obs.items()}, **{k: pick(v, t) for k, v in rest.items()},
           "reward": np.float32(t == n - 1), "discount": np.float32(1), "is_first": t == 0, "is_last": t == n - 1,
           "is_terminal": t == n - 1} for t in range(n)]


def write_rlds(data_dir: str, name: str, splits: Mapping[str, Sequence[Mapping[str, Any]]],
               version: str = "1.0.0", template: Mapping[str, Any] | None = None) -> str:
  """Writes the episodes as a TFDS tfrecord dataset; returns its directory (data_dir/name/version).

  template: an episode whose layout defines the features (default: the first episode given), needed when
  every split is empty.
  """
  import tensorflow_datasets as tfds
  template = template or next(ep for eps in splits.values() for ep in eps)
  features = _features(template)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split):
    for i, episode in enumerate(splits[split]):
      yield i, {"steps": _steps(episode), "episode_metadata": {"episode_index": i}}

  attrs = dict(VERSION=tfds.core.Version(version), name=name, _info=_info, _split_generators=_split_generators,
               _generate_examples=_generate_examples,
               # A one-part module name: TFDS looks up the code path of dotted ones with importlib_resources.
               __module__="pi0_synthetic_rlds")
  cls = type(f"Synthetic_{name}", (tfds.core.GeneratorBasedBuilder,), attrs, skip_registration=True)
  builder = cls(data_dir=str(data_dir), file_format="tfrecord")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.path.join(str(data_dir), name, version)


def episode(length: int, *, seed: int = 0, image_size: int = 16, state_dim: int = 4, action_dim: int = 4,
            instruction: str = "pick up the block", wrist: bool = True) -> dict:
  """A Meta-World-shaped episode with smooth, varying images and seeded state/actions."""
  rng = np.random.default_rng(seed)
  t = np.arange(length, dtype=np.float32)[:, None]
  yy, xx = np.mgrid[:image_size, :image_size]

  def frames(phase):
    base = (np.sin(xx[None] / 3.0 + t[:, :, None] * 0.3 + phase) + 1) * 100
    img = np.stack([base, np.roll(base, 1, axis=1), 255 - base], axis=-1)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)

  obs = {"image": frames(seed * 0.7), "state": (rng.normal(size=(length, state_dim)) + t * 0.1).astype(np.float32)}
  if wrist:
    obs["wrist_image"] = frames(seed * 1.3 + 1)
  return {"observation": obs,
          "action": np.clip(rng.normal(size=(length, action_dim)) * 0.5, -1, 1).astype(np.float32),
          "language_instruction": instruction}
