"""Normalisation statistics: one scan over a dataset's training split, cached.

  python -m pi0_jax.data.stats --dataset_dir=data/metaworld/metaworld_ml10_train/1.0.0 --out=stats.json

The scan reads every episode of the split once (images are read but not
decoded), standardises it with the dataset's DatasetSpec, applies the spec's
filters, checks its numbers (pi0_jax.data.validate) and accumulates state and
actions. It returns a record in SPEC's format plus bookkeeping:

  {"norm_stats": {"state": S, "actions": S},   S = {"mean", "std", "q01", "q99", "min", "max", "count"}
   "dataset", "split", "key", "identity", "spec",
   "episodes", "frames", "filtered_episodes",
   "bad_episodes": [{dataset, split, episode, tfds_id, key, problem}],   non-finite or empty episodes
   "episode_lengths": {"index": [...], "length": [...]}}                good episodes, by split position

Statistics are per dimension over the unpadded, unnormalised frames of the good episodes: `std` is the
population standard deviation (ddof 0) and q01/q99 are exact quantiles (`numpy.quantile`, linear
interpolation) over all frames, which holds every frame's state and actions in memory (N x D float32).

The pipeline only ever computes statistics over the training split. Records are cached as
`<cache_dir>/<dataset>-<split>-<key>.json`, where the key hashes the dataset's identity (TFDS name,
version, split sizes, shard lengths and byte count), the split and the DatasetSpec's fingerprint, never its
path: a moved dataset reuses its statistics, a regenerated or re-specified one gets new ones. Writes are
atomic (temporary file + rename), so processes that scan concurrently do no harm; on a multi-host job, run
this command once beforehand with a shared --cache_dir so that hosts do not each rescan.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any, Mapping

import numpy as np

STATS_FORMAT = 1  # Bump when the record's meaning changes: old cache entries are then ignored.
STAT_KEYS = ("mean", "std", "q01", "q99", "min", "max", "count")


def default_cache_dir() -> str:
  return os.environ.get("PI0_STATS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pi0_jax", "stats")


def compute_stats(x: np.ndarray) -> dict[str, Any]:
  """Per-dimension statistics of x [N, D] as JSON-able lists (count is the number of rows)."""
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"compute_stats: expected a non-empty [frames, dims] array, got shape {x.shape}.")
  q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
  return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "q01": q01.tolist(), "q99": q99.tolist(),
          "min": x.min(0).tolist(), "max": x.max(0).tolist(), "count": int(x.shape[0])}


def as_arrays(stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {k: np.asarray(v, np.float32) for k, v in stats.items() if k != "count"}


def cache_key(identity: Mapping[str, Any], spec_fingerprint: str) -> str:
  blob = json.dumps({"format": STATS_FORMAT, "identity": dict(identity), "spec": spec_fingerprint}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:20]


def scan(builder, dataset: str, spec, split: str = "train", *, num_parallel_calls: int = 2,
         progress: bool = False) -> dict[str, Any]:
  """Reads `split` once: statistics, bad episodes and episode lengths (the record described above)."""
  import tensorflow as tf
  from pi0_jax.data import rlds, validate

  identity = rlds.identity(builder, split)
  shard_lengths = identity["shard_lengths"]

  def numbers(raw):
    episode = rlds.standardize(raw, spec, image_keys=())
    return {"id": episode["episode_id"], "state": episode["state"], "actions": episode["actions"],
            "keep": rlds.keep_episode(episode, spec)}

  options = tf.data.Options()
  options.deterministic = True
  ds = rlds.read_episodes(builder, split, shuffle_seed=None, options=options)
  ds = ds.map(numbers, num_parallel_calls=num_parallel_calls, deterministic=True).prefetch(2)
  validate.check_standardized_spec(dataset, ds.element_spec, state_dim=spec.state_dim, action_dim=spec.action_dim,
                                   max_dim=10**9)
  if progress:
    from tqdm import tqdm
    it = tqdm(ds.as_numpy_iterator(), total=identity["num_examples"], unit="episode", desc=f"scan {dataset}/{split}")
  else:
    it = ds.as_numpy_iterator()
  good, bad, filtered = [], [], 0
  for ep in it:
    tfds_id = ep["id"].decode()
    index = validate.episode_index(tfds_id, shard_lengths)
    if not ep["keep"]:
      filtered += 1
      continue
    problems = validate.episode_problems(ep["state"], ep["actions"], min_length=1)
    if problems:
      bad += [validate.EpisodeProblem(dataset, split, index, tfds_id, key, msg).to_json() for key, msg in problems]
      continue
    good.append((index, ep["state"], ep["actions"]))
  if not good:
    raise validate.DataError(f"dataset {dataset!r}, split {split!r}: no usable episode among "
                             f"{identity['num_examples']} ({filtered} filtered out, {len(bad)} problems"
                             + (f"; first: {validate.EpisodeProblem(**bad[0])}" if bad else "") + ").")
  good.sort(key=lambda g: g[0])  # Stored order, so the float sums do not depend on read order.
  state = np.concatenate([g[1] for g in good])
  actions = np.concatenate([g[2] for g in good])
  return {
      "norm_stats": {"state": compute_stats(state), "actions": compute_stats(actions)},
      "dataset": dataset, "split": split, "key": cache_key(identity, spec.fingerprint()),
      "identity": identity, "spec": spec.fingerprint(), "format": STATS_FORMAT,
      "episodes": len(good), "frames": int(actions.shape[0]), "filtered_episodes": filtered, "bad_episodes": bad,
      "episode_lengths": {"index": [g[0] for g in good], "length": [int(g[2].shape[0]) for g in good]},
  }


def load_or_scan(builder, dataset: str, spec, split: str = "train", *, cache_dir: str | None = None,
                 refresh: bool = False, num_parallel_calls: int = 2, progress: bool = False) -> dict[str, Any]:
  """The cached scan record of `split`, scanning (and caching) it when there is none."""
  import tensorflow as tf
  from pi0_jax.data import rlds
  cache_dir = cache_dir or default_cache_dir()
  key = cache_key(rlds.identity(builder, split), spec.fingerprint())
  path = os.path.join(cache_dir, f"{dataset}-{split}-{key}.json")
  if not refresh and tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)
  record = scan(builder, dataset, spec, split, num_parallel_calls=num_parallel_calls, progress=progress)
  write_json(path, record)
  return record


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Atomic write (temporary file, then rename), also on gs:// paths."""
  import tensorflow as tf
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(payload, f, indent=1)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def spec_format(record: Mapping[str, Any]) -> dict[str, Any]:
  """Just SPEC's `{"norm_stats": {"state": ..., "actions": ...}}` part of a record."""
  return {"norm_stats": record["norm_stats"]}


# --- Command line ---------------------------------------------------------------------------------


def main(argv):
  del argv
  from absl import flags
  from pi0_jax.data import rlds, specs
  f = flags.FLAGS
  builder = rlds.open_builder(f.dataset_name or "dataset", dir=f.dataset_dir)
  name = f.dataset_name or builder.info.name
  spec = specs.resolve(f.spec, name=name, where="--spec")
  record = load_or_scan(builder, name, spec, f.split, cache_dir=f.cache_dir, refresh=f.refresh, progress=True)
  for group in ("state", "actions"):
    s = record["norm_stats"][group]
    print(f"{group}: {s['count']} frames")
    print("  dim " + " ".join(f"{k:>10}" for k in STAT_KEYS[:-1]))
    for d in range(len(s["mean"])):
      print(f"  {d:3d} " + " ".join(f"{s[k][d]:10.4f}" for k in STAT_KEYS[:-1]))
  print(f"{record['episodes']} episodes, {record['frames']} frames, {record['filtered_episodes']} filtered out, "
        f"{len(record['bad_episodes'])} problems")
  for p in record["bad_episodes"][:20]:
    print("  bad:", p["dataset"], p["split"], "episode", p["episode"], p["tfds_id"], p["key"], p["problem"])
  if f.out:
    write_json(f.out, record)
    print(f"wrote {f.out}")


def _define_flags():
  from absl import flags
  flags.DEFINE_string("dataset_dir", None, "Prepared TFDS dataset directory (.../<name>/<version>).", required=True)
  flags.DEFINE_string("dataset_name", None, "Dataset name (default: the TFDS name in dataset_info.json).")
  flags.DEFINE_string("spec", None, "Spec to standardise with: a pi0_jax.data.specs.DATASETS name or 'module:NAME' "
                      "(default: the dataset's name).")
  flags.DEFINE_string("split", "train", "Split to scan; training statistics come from 'train' only.")
  flags.DEFINE_string("out", None, "Also write the record (SPEC's norm_stats format + bookkeeping) here.")
  flags.DEFINE_string("cache_dir", None, "Statistics cache (default: $PI0_STATS_CACHE or ~/.cache/pi0_jax/stats).")
  flags.DEFINE_bool("refresh", False, "Rescan even when the cache holds a record.")


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.data.stats`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
