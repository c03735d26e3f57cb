"""Shared helpers for the data tests (no tests here): tiny RLDS datasets, configs, a stand-in tokenizer."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from pi0_jax.data import synthetic
from pi0_jax.model.config import get_preset

# Test datasets borrow the Meta-World spec under names that no TFDS catalog entry has.
SPEC = "metaworld_ml10_train"


def tiny_config(**overrides):
  return get_preset("tiny", **overrides)


def fake_tokenize(max_len: int):
  """Bytes of the prompt as token ids (+3 keeps them off pad/eos/bos), truncated and right-padded with 0."""
  def tokenize(prompt: str):
    ids = [2] + [b % 120 + 3 for b in prompt.encode()][: max_len - 1]
    tokens = np.zeros(max_len, np.int32)
    tokens[: len(ids)] = ids
    return tokens, np.arange(max_len) < len(ids)
  return tokenize


def marked_episode(length: int, marker: int, *, image_size: int = 16, instruction: str = "push the puck",
                   action_offset: float = 0.0) -> dict:
  """A Meta-World-shaped episode whose state[:, 0] is `marker` (to tell episodes apart after the pipeline)."""
  ep = synthetic.episode(length, seed=marker, image_size=image_size, instruction=instruction)
  ep["observation"]["state"][:, 0] = marker
  ep["action"] = ep["action"] + np.float32(action_offset)
  return ep


def write(root, name: str, train, val=None) -> str:
  splits = {"train": list(train)}
  if val is not None:
    splits["val"] = list(val)
  return synthetic.write_rlds(str(root), name, splits)


def data_config(directories: dict[str, str], stats_dir, **overrides) -> ml_collections.ConfigDict:
  """config.data for datasets {name: dir}, all standardised with the Meta-World spec."""
  c = dict(datasets=[dict(name=n, dir=d, spec=SPEC) for n, d in directories.items()],
           shuffle_buffer=16, stats_dir=os.fspath(stats_dir), num_parallel_calls=2)
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def episode_markers(batches, norm_state: dict, dim: int = 0) -> set[int]:
  """The markers (unnormalised state[:, 0]) of every example in host batches."""
  mean, std = norm_state["mean"][dim], norm_state["std"][dim]
  out = set()
  for b in batches:
    raw = np.asarray(b["observation"].state)[:, dim] * (std + 1e-6) + mean
    out |= {int(round(v)) for v in raw}
  return out


def flatten_batch(batch) -> dict[str, np.ndarray]:
  """A batch as {path: array}, e.g. to compare batches or save them with np.savez."""
  import jax
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]}


def assert_batches_equal(a, b) -> None:
  fa, fb = flatten_batch(a), flatten_batch(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)
