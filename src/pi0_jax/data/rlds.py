"""Reading RLDS episodes from TFDS directories and standardising them.

A dataset is opened from its directory alone (`tfds.builder_from_directory`),
so neither the builder class nor the network is needed. Steps are read with
`SkipDecoding`, which yields each trajectory as dense tensors with a leading
time axis and images still encoded: frames are shuffled encoded and decoded
only after the shuffle.

`standardize` turns one raw episode into the common layout of every dataset:

  images        {slot: string [T]}  encoded frames; "" for an empty slot
  image_masks   {slot: bool [T]}    False for an empty slot
  state         float32 [T, S]      the spec's state keys, concatenated
  actions       float32 [T, A]
  prompt        string [T]
  episode_id    string []           TFDS id of the episode (names it in errors)
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from pi0_jax.data import validate
from pi0_jax.data.specs import DatasetSpec


def open_builder(name: str, *, dir: str | None = None, data_dir: str | None = None,  # pylint: disable=redefined-builtin
                 version: str | None = None):
  """A TFDS builder for dataset `name`, from `dir` or from `data_dir`/<name>, plus an optional `version`.

  `dir` is the prepared dataset's directory (.../<name>/<version>, holding dataset_info.json) or the folder of
  its versions (.../<name>); without `version`, the newest version found there is used. Only the directory
  is read: no builder class, catalog or network is involved.
  """
  if dir is None:
    if data_dir is None:
      raise ValueError(f"dataset {name!r}: give `dir` (the directory holding dataset_info.json) or `data_dir`.")
    dir = os.path.join(data_dir, name)
  if version is not None:
    dir = os.path.join(dir, version)
  elif not tf.io.gfile.exists(os.path.join(dir, "dataset_info.json")):
    found = [v.rstrip("/") for v in (tf.io.gfile.listdir(dir) if tf.io.gfile.isdir(dir) else [])
             if tf.io.gfile.exists(os.path.join(dir, v.rstrip("/"), "dataset_info.json"))]
    if found:
      dir = os.path.join(dir, max(found, key=_version_key))
  if not tf.io.gfile.exists(os.path.join(dir, "dataset_info.json")):
    raise FileNotFoundError(f"dataset {name!r}: {dir!r} holds no dataset_info.json, nor does any version folder "
                            "in it; expected a prepared TFDS dataset (.../<name>/<version>/dataset_info.json).")
  builder = tfds.builder_from_directory(dir)
  if "steps" not in builder.info.features:
    raise validate.DataError(f"dataset {name!r}, every episode, key 'steps': missing; not an RLDS dataset "
                             f"(features: {sorted(builder.info.features.keys())}).")
  return builder


def _version_key(v: str):
  try:
    return tuple(int(p) for p in v.split("."))
  except ValueError:
    return (-1,)


def identity(builder, split: str) -> dict:
  """What identifies a dataset's split independently of where it lies: name, version, sizes."""
  info = builder.info
  s = info.splits[split]
  return {"name": info.name, "full_name": info.full_name, "version": str(info.version), "split": split,
          "num_examples": int(s.num_examples), "num_bytes": int(s.num_bytes), "shard_lengths": list(s.shard_lengths)}


def process_split(builder, dataset: str, split: str, process_index: int, process_count: int):
  """This process's disjoint part of `split` (TFDS even split: sizes differ by at most one)."""
  if split not in builder.info.splits:
    raise validate.DataError(f"dataset {dataset!r}: no split {split!r}; splits are {sorted(builder.info.splits)}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  if process_count == 1:
    return split
  part = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  if builder.info.splits[part].num_examples == 0:
    raise validate.DataError(f"dataset {dataset!r}, split {split!r}: {builder.info.splits[split].num_examples} "
                             f"episodes cannot be shared among {process_count} processes (process {process_index} "
                             "gets none).")
  return part


def transformed_steps_spec(builder, dataset: str, spec: DatasetSpec, split: str = "train") -> dict:
  """The element spec of one episode's steps after the spec's transform ([T, ...] TensorSpecs, images as
  encoded strings), found by tracing the transform: nothing is read. A transform that reads a key the
  dataset lacks fails here, naming the dataset and the key."""
  ds = read_episodes(builder, split, shuffle_seed=None)
  if spec.transform is None:
    return ds.element_spec["steps"]
  try:
    return ds.map(lambda e: spec.transform(e["steps"])).element_spec
  except KeyError as e:
    found = re.search(r"KeyError: (.*)", str(e.args[0]) if e.args else "")  # Autograph wraps the message.
    key = found.group(1).strip() if found else str(e)
    raise validate.DataError(f"dataset {dataset!r}, every episode: the spec's transform "
                             f"{getattr(spec.transform, '__qualname__', spec.transform)} reads key {key} that the "
                             f"steps lack; step keys are {sorted(ds.element_spec['steps'])}.") from None


def read_episodes(builder, split, *, shuffle_seed: int | None, num_parallel_reads: int = 1,
                  options: tf.data.Options | None = None) -> tf.data.Dataset:
  """Raw episodes of `split` (a split name or TFDS split object), steps undecoded, each with its `tfds_id`.

  With a `shuffle_seed`, file order is shuffled (seeded, reshuffled each epoch); without one, episodes come
  in stored order.
  """
  read_config = tfds.ReadConfig(
      add_tfds_id=True, try_autocache=False, skip_prefetch=True, options=options, enable_ordering_guard=False,
      shuffle_seed=shuffle_seed, shuffle_reshuffle_each_iteration=shuffle_seed is not None,
      interleave_cycle_length=num_parallel_reads, num_parallel_calls_for_interleave_files=num_parallel_reads)
  return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
                            decoders={"steps": tfds.decode.SkipDecoding()})


def _get(tree, path: str):
  """tree[a][b] for path 'a/b'; a key that itself holds '/' (kuka's 'clip_function_input/...') is found whole."""
  while True:
    if path in tree:
      return tree[path]
    head, sep, path = path.partition("/")
    if not sep:
      raise KeyError(head)
    tree = tree[head]


def _as_matrix(x) -> tf.Tensor:
  x = tf.cast(x, tf.float32)
  return x[:, None] if x.shape.rank == 1 else x


def standardize(episode: dict, spec: DatasetSpec, image_keys: Sequence[str]) -> dict:
  """One raw RLDS episode -> the common layout (see the module docstring). Pure TF, runs in the graph."""
  steps = episode["steps"]
  if spec.transform is not None:
    steps = spec.transform(steps)
  obs = steps["observation"]
  actions = _as_matrix(_get(steps, spec.action_key))
  length = tf.shape(actions)[0]
  cameras = spec.camera_map
  images, masks = {}, {}
  for slot in image_keys:
    key = cameras.get(slot)
    images[slot] = tf.fill([length], "") if key is None else _get(obs, key)
    masks[slot] = tf.fill([length], key is not None)
  if spec.instruction_key is not None:
    prompt = _get(steps, spec.instruction_key)
  else:
    prompt = tf.fill([length], spec.prompt)
  return {
      "images": images,
      "image_masks": masks,
      "state": (tf.concat([_as_matrix(_get(obs, k)) for k in spec.state_keys], axis=-1) if spec.state_keys
                else tf.zeros([length, 0], tf.float32)),  # No proprioception: all padding after pad_dims.
      "actions": actions,
      "prompt": prompt,
      "episode_id": episode["tfds_id"],
  }


def has_instruction(episode: dict) -> tf.Tensor:
  """True when some step of the standardised episode has a non-empty prompt."""
  return tf.reduce_any(tf.strings.length(tf.strings.strip(episode["prompt"])) > 0)


def keep_episode(episode: dict, spec: DatasetSpec) -> tf.Tensor:
  """The spec's filters on a standardised episode (True: keep)."""
  keep = tf.constant(True)
  if spec.require_instruction:
    keep = tf.logical_and(keep, has_instruction(episode))
  if spec.episode_filter is not None:
    keep = tf.logical_and(keep, tf.cast(spec.episode_filter(episode), tf.bool))
  return keep
