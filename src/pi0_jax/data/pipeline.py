"""The input pipeline: RLDS datasets -> mixed, shuffled, decoded, augmented batches -> global arrays.

Stages, in order (one function each):
  plan      open every dataset, check its features against its spec, load or compute its training
            statistics and bad-episode list (pi0_jax.data.stats), decide errors or skips, count frames:
            everything that can fail does so here, before anything compiles.
  read      this process's disjoint part of the split, file order seeded (rlds.read_episodes)
  standardise -> filter -> normalise -> trajectory transforms (rlds, normalize, traj), per episode
  flatten   episodes -> frames (images still encoded)
  mix       seeded sampler, weights n^0.43 or explicit (mixture.mix)
  shuffle   one buffer of encoded frames
  decode    decode, resize with padding, augment at training time (images); frames stay uint8
  batch     local batch = global_batch / process_count, then prefetch
  host      tokenise prompts, assemble the batch, make global sharded arrays (hosts.make_global_batch);
            images become float32 in [-1, 1] last, on the devices (or in numpy for host batches)

A batch is {"observation": Observation, "actions": float32 [B, H, A] (normalised, zero-padded dims),
"action_pad_mask": bool [B, H] (False past the episode end), "action_dim_mask": bool [B, A] (False on
padded dims), "dataset_index": int32 [B] (position in config.data.datasets)}.

  data = make_train_data(config.data, model_config, global_batch=32, mesh=mesh, data_axes=("data",), seed=0)
  batch = data.next_batch()
  data.save_state(dir)                  # after k batches ...
  fresh = make_train_data(...); fresh.restore_state(dir)   # ... in another process: batches k+1, ... follow

The stream is a pure function of the config, the seed, the datasets and the process index/count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pi0_jax.data import config as config_lib
from pi0_jax.data import hosts, images as images_lib, mixture, normalize, stats as stats_lib
from pi0_jax.data import validate
from pi0_jax.data.config import DataSettings, DatasetSource
from pi0_jax.data.specs import DatasetSpec

log = logging.getLogger(__name__)

# Independent seeds per purpose, derived from (seed, process, purpose, dataset).
_FILES, _MIX, _SHUFFLE, _AUGMENT, _SUBSAMPLE = range(1, 6)


def derive_seed(seed: int, *path: int) -> int:
  return int(np.random.SeedSequence([int(seed) % 2**63, *map(int, path)]).generate_state(1, np.uint32)[0])


# --- Plan ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
  """One dataset, checked and measured before the stream is built."""

  index: int
  source: DatasetSource
  spec: DatasetSpec
  builder: Any
  split: str
  identity: dict
  norm_stats: dict  # SPEC format: {"state": {...}, "actions": {...}}
  state_skip: np.ndarray
  action_skip: np.ndarray
  bad_ids: tuple[str, ...]  # tfds ids of non-finite episodes, dropped under skip_bad_episodes
  frames: int  # Frames this split contributes (all processes), after filters and skips.
  report: dict


def _load_explicit_stats(path: str, name: str, num_datasets: int) -> dict:
  import tensorflow as tf
  with tf.io.gfile.GFile(path) as f:
    blob = json.load(f)
  if name in blob.get("datasets", {}):
    return blob["datasets"][name]["norm_stats"]
  if "norm_stats" in blob and num_datasets == 1:
    return blob["norm_stats"]
  raise ValueError(f"config.data.norm_stats {path!r}: no statistics for dataset {name!r} (expected "
                   "{'datasets': {name: {'norm_stats': ...}}}, or {'norm_stats': ...} with a single dataset).")


def plan_dataset(index: int, source: DatasetSource, settings: DataSettings, *, train: bool,
                 specs: Mapping[str, DatasetSpec] | None = None) -> DatasetPlan:
  from pi0_jax.data import rlds
  name = source.name
  spec = source.resolve_spec(specs, index)
  builder = rlds.open_builder(name, dir=source.dir, data_dir=source.data_dir, version=source.version)
  split = source.split if train else source.eval_split
  validate.check_features(name, builder.info.features["steps"].feature, spec, max_dim=settings.action_dim,
                          transformed=rlds.transformed_steps_spec(builder, name, spec, source.split))
  rlds.process_split(builder, name, split, 0, 1)  # The split exists.
  scan = lambda s: stats_lib.load_or_scan(builder, name, spec, s, cache_dir=settings.stats_dir,  # noqa: E731
                                          num_parallel_calls=settings.num_parallel_calls)
  train_record = scan(source.split)  # Statistics come from the training split only.
  record = train_record if split == source.split else scan(split)
  norm_stats = train_record["norm_stats"]
  if settings.norm_stats:
    explicit = _load_explicit_stats(settings.norm_stats, name, len(settings.datasets))
    for key in ("state", "actions"):
      want, got = len(norm_stats[key]["mean"]), len(explicit[key]["mean"])
      if got != want:
        raise validate.DataError(f"config.data.norm_stats {settings.norm_stats!r}: dataset {name!r}, key {key!r} "
                                 f"has statistics for {got} dims, expected {want}.")
    norm_stats = explicit

  problems = [validate.EpisodeProblem(**p) for p in record["bad_episodes"]]
  lengths = record["episode_lengths"]
  short = [(i, n) for i, n in zip(lengths["index"], lengths["length"]) if n < settings.min_length]
  short_problems = [validate.EpisodeProblem(name, split, i, f"{split}[{i}]", "steps",
                                            f"{n} steps, fewer than the minimum {settings.min_length} "
                                            "(data.min_episode_length; default: the action horizon)")
                    for i, n in short]
  all_problems = problems + short_problems
  if all_problems and not settings.skip_bad_episodes:
    shown = "\n  ".join(str(p) for p in all_problems[:10])
    more = f"\n  ... and {len(all_problems) - 10} more" if len(all_problems) > 10 else ""
    raise validate.DataError(f"{len(all_problems)} bad episode(s) in dataset {name!r}, split {split!r}:\n  "
                             f"{shown}{more}\nFix the data, or set config.data.skip_bad_episodes=True to skip them "
                             "(they are counted and reported).")
  cap = settings.max_frames_per_episode
  frames = sum(min(n, cap) if cap else n for n in lengths["length"] if n >= settings.min_length)
  if frames == 0:
    raise validate.DataError(f"dataset {name!r}, split {split!r}: no frames left after skipping bad and short "
                             "episodes.")
  bad_ids = tuple(sorted({p.tfds_id for p in problems}))
  report = {"dataset": name, "split": split, "episodes": sum(n >= settings.min_length for n in lengths["length"]),
            "frames": frames, "filtered_episodes": record["filtered_episodes"],
            "skipped_bad_episodes": len(bad_ids), "skipped_short_episodes": len(short)}
  state_dim = len(norm_stats["state"]["mean"])
  action_dim = len(norm_stats["actions"]["mean"])
  return DatasetPlan(index=index, source=source, spec=spec, builder=builder, split=split,
                     identity=rlds.identity(builder, split), norm_stats=norm_stats,
                     state_skip=normalize.skip_mask(state_dim, spec.unnormalized_state_dims),
                     action_skip=normalize.skip_mask(action_dim, spec.unnormalized_action_dims),
                     bad_ids=bad_ids, frames=frames, report=report)


# --- Stream ----------------------------------------------------------------------------------------


def episode_frames(plan: DatasetPlan, settings: DataSettings, *, process_index: int, process_count: int,
                   train: bool, options=None):
  """This process's frames of one dataset: read -> standardise -> filter -> normalise -> chunk -> flatten."""
  import tensorflow as tf
  from pi0_jax.data import rlds, traj
  name, spec = plan.source.name, plan.spec
  part = rlds.process_split(plan.builder, name, plan.split, process_index, process_count)
  seed = settings.seed
  ds = rlds.read_episodes(plan.builder, part, options=options, num_parallel_reads=settings.num_parallel_reads,
                          shuffle_seed=derive_seed(seed, process_index, _FILES, plan.index) if train else None)
  ds = ds.repeat()
  ds = ds.map(lambda e: rlds.standardize(e, spec, settings.image_keys), num_parallel_calls=settings.num_parallel_calls,
              deterministic=True)
  validate.check_standardized_spec(name, ds.element_spec, state_dim=spec.state_dim, action_dim=spec.action_dim,
                                   max_dim=settings.action_dim)
  ds = ds.filter(lambda e: rlds.keep_episode(e, spec))
  min_length = settings.min_length
  if settings.skip_bad_episodes:
    bad = tf.constant(list(plan.bad_ids) or [""], tf.string)
    ds = ds.filter(lambda e: tf.logical_and(tf.shape(e["actions"])[0] >= min_length,
                                            tf.logical_not(tf.reduce_any(tf.equal(e["episode_id"], bad)))))
  subsample_seed = derive_seed(seed, process_index, _SUBSAMPLE, plan.index)
  norm = {k: stats_lib.as_arrays(v) for k, v in plan.norm_stats.items()}

  def transform(episode):
    # The scan already vetted these episodes; the asserts guard data no scan covered.
    with tf.control_dependencies(validate.assert_episode(episode, name, min_length)):
      episode = dict(episode, state=tf.identity(episode["state"]))
    episode["state"] = normalize.normalize_tf(episode["state"], norm["state"], settings.norm_mode, plan.state_skip)
    episode["actions"] = normalize.normalize_tf(episode["actions"], norm["actions"], settings.norm_mode,
                                                plan.action_skip)
    frames = traj.to_frames(episode, horizon=settings.horizon, action_dim=settings.action_dim,
                            max_frames=settings.max_frames_per_episode, seed=subsample_seed)
    frames["dataset_index"] = tf.fill(tf.shape(frames["prompt"]), plan.index)
    return frames

  ds = ds.map(transform, num_parallel_calls=settings.num_parallel_calls, deterministic=True)
  return ds.unbatch()


def make_options(settings: DataSettings):
  import tensorflow as tf
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = settings.threadpool_size or settings.num_parallel_calls + 2
  options.threading.max_intra_op_parallelism = 1
  if settings.ram_budget_gb:
    options.autotune.ram_budget = int(settings.ram_budget_gb * 2**30)
  # The only stateful ops are assertions, which hold no state: iterators may be checkpointed.
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return options


def build_stream(plans: Sequence[DatasetPlan], settings: DataSettings, *, local_batch: int, process_index: int,
                 process_count: int, train: bool, skip_frames: int = 0):
  """The tf.data pipeline of batches for this process (see the module docstring).

  With settings.host_split == "global_batch" every process builds the global stream (as process 0 of 1)
  and keeps, before decoding, the rows [i * local_batch, (i + 1) * local_batch) of each global batch;
  `skip_frames` then counts frames of the global stream.
  """
  import tensorflow as tf
  options = make_options(settings)
  rows = None
  if settings.host_split == "global_batch":
    rows = (process_index, process_count)
    process_index, process_count = 0, 1
  streams = [episode_frames(p, settings, process_index=process_index, process_count=process_count, train=train,
                            options=options) for p in plans]
  frames = [p.frames for p in plans]
  if train:
    weights = mixture.mixture_weights(frames, settings.weight_exponent, [p.source.weight for p in plans])
  else:
    weights = mixture.mixture_weights(frames, 1.0)  # Evaluation sees each dataset in its natural proportion.
  ds = mixture.mix(streams, weights, seed=derive_seed(settings.seed, process_index, _MIX))
  if train:
    ds = ds.shuffle(settings.shuffle_buffer, seed=derive_seed(settings.seed, process_index, _SHUFFLE),
                    reshuffle_each_iteration=True)
  ds = ds.enumerate()
  if skip_frames:
    ds = ds.skip(skip_frames)  # Replay: frames are dropped before they are decoded.
  if rows is not None:
    index, count = rows
    ds = ds.filter(lambda position, _: (position % (local_batch * count)) // local_batch == index)
  augment = settings.augment_params if (train and settings.augment) else None
  aug_seed = tf.constant([derive_seed(settings.seed, process_index, _AUGMENT), process_index], tf.int64)

  def decode(position, frame):
    frame_seed = tf.random.experimental.stateless_fold_in(aug_seed, position)
    frame = dict(frame)
    frame["images"] = images_lib.process_frame_images(frame["images"], frame["image_masks"],
                                                  resolution=settings.resolution, frame_seed=frame_seed,
                                                  params=augment)
    return frame

  ds = ds.map(decode, num_parallel_calls=settings.num_parallel_calls, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.prefetch(settings.prefetch_batches)
  return ds.with_options(options), weights


# --- Host side --------------------------------------------------------------------------------------


def make_tokenize_fn(settings: DataSettings) -> Callable[[str], tuple[np.ndarray, np.ndarray]]:
  if not settings.tokenizer:
    raise ValueError("config.data.tokenizer: a sentencepiece model path is needed (or pass tokenize_fn).")
  from pi0_jax.data.tokenizer import PromptTokenizer  # Imported late: only pipelines that tokenise need it.
  return PromptTokenizer(settings.tokenizer, settings.max_token_len).tokenize


class DataPipeline:
  """An endless stream of batches for this process, with saveable position.

  next_batch():       the next batch; global jax.Arrays over the mesh's data axes when a mesh was given,
                      host numpy arrays otherwise (next_host_batch() always gives the latter).
  save_state(dir):    writes the tf.data iterator (shuffle buffer included) and the settings to `dir`;
  restore_state(dir): continues from there, in this or a fresh process with the same config.
  state()/restore(d): the same for the trainer's JSON checkpoint metadata (see `state`).
  report():           per dataset: episodes, frames, weight, filtered and skipped episodes.
  """

  def __init__(self, settings: DataSettings, plans: Sequence[DatasetPlan], *, global_batch: int, train: bool,
               process_index: int, process_count: int, mesh=None, data_axes: Sequence[str] = ("data",),
               tokenize_fn: Callable | None = None, state_root: str | None = None):
    self.settings = settings
    self.plans = tuple(plans)
    self.train = train
    self.process_index, self.process_count = process_index, process_count
    self.global_batch = global_batch
    self.local_batch = hosts.local_batch_size(global_batch, process_count)
    self.mesh, self.data_axes = mesh, tuple(data_axes)
    from pi0_jax.data.tokenizer import TokenCache  # pylint: disable=g-import-not-at-top
    self._tokens = TokenCache(tokenize_fn or make_tokenize_fn(settings), settings.max_token_len)
    self.state_root = state_root
    self.batches = 0
    self._images_on_device = None
    self._build(skip_batches=0)
    for line in self.report_lines():
      log.info("%s", line)

  # Stream construction and position.

  def _skip_frames(self, batches: int) -> int:
    """Frames of this process's stream before batch `batches` (of the global stream under global_batch)."""
    return batches * (self.global_batch if self.settings.host_split == "global_batch" else self.local_batch)

  def _build(self, skip_batches: int) -> None:
    self._dataset, self.weights = build_stream(
        self.plans, self.settings, local_batch=self.local_batch, process_index=self.process_index,
        process_count=self.process_count, train=self.train, skip_frames=self._skip_frames(skip_batches))
    self._iterator = iter(self._dataset)
    self.batches = skip_batches

  def fingerprint(self, with_process: bool = True) -> dict:
    """What the stream depends on: restoring into a pipeline with a different one is refused."""
    s = config_lib.describe(self.settings)
    for k in ("num_parallel_calls", "num_parallel_reads", "threadpool_size", "ram_budget_gb", "prefetch_batches",
              "stats_dir", "iterator_state", "keep_iterator_states", "tokenizer"):
      s.pop(k)
    for d in s["datasets"]:  # Where a dataset lies does not change the stream; what it holds does.
      d.pop("dir"), d.pop("data_dir")
    s["identities"] = [p.identity for p in self.plans]
    s["specs"] = [p.spec.fingerprint() for p in self.plans]  # A changed transform changes the stream.
    s.update(train=self.train, global_batch=self.global_batch)
    # A global_batch split gives the same stream for any process count: a run may resume on another one.
    if with_process or self.settings.host_split != "global_batch":
      s["process_count"] = self.process_count
    if with_process:
      s["process_index"] = self.process_index
    return json.loads(json.dumps(s))

  def _check_fingerprint(self, saved: dict, where: str) -> None:
    mine = self.fingerprint()
    if saved != mine:
      diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
      raise ValueError(f"Data iterator state in {where} belongs to a different stream (differs in {diff}); "
                       "restore it into a pipeline built from the same data config, seed, batch size and "
                       "process index/count.")

  # Batches.

  def _next_raw(self) -> dict:
    """The next batch as flat numpy arrays, images still uint8."""
    import tensorflow as tf
    try:
      raw = next(self._iterator)
    except tf.errors.InvalidArgumentError as e:
      raise validate.DataError(f"bad input while reading batch {self.batches}: {e.message}") from None
    raw = {k: (v.numpy() if hasattr(v, "numpy") else {kk: vv.numpy() for kk, vv in v.items()})
           for k, v in raw.items()}
    raw["tokenized_prompt"], raw["tokenized_prompt_mask"] = self._tokens.batch(raw.pop("prompt"))
    raw["dataset_index"] = raw["dataset_index"].astype(np.int32)
    self.batches += 1
    return raw

  @staticmethod
  def _assemble(raw: dict, model_images: dict) -> dict:
    from pi0_jax.model.observation import Observation
    return {
        "observation": Observation(images=model_images, image_masks=raw["image_masks"], state=raw["state"],
                                   tokenized_prompt=raw["tokenized_prompt"],
                                   tokenized_prompt_mask=raw["tokenized_prompt_mask"]),
        "actions": raw["actions"],
        "action_pad_mask": raw["action_pad_mask"],
        "action_dim_mask": raw["action_dim_mask"],
        "dataset_index": raw["dataset_index"],
    }

  def next_host_batch(self) -> dict:
    """The next batch of this process as numpy arrays."""
    raw = self._next_raw()
    return self._assemble(raw, {k: images_lib.to_model_range(v, raw["image_masks"][k])
                                for k, v in raw["images"].items()})

  def next_batch(self):
    """The next batch: global jax.Arrays split over the mesh's data axes (host numpy without a mesh)."""
    if self.mesh is None:
      return self.next_host_batch()
    raw = hosts.make_global_batch(self._next_raw(), self.mesh, self.data_axes)
    if self._images_on_device is None:
      import jax
      import jax.numpy as jnp
      # uint8 crosses to the devices; the float conversion runs there, batch-sharded like its input.
      self._images_on_device = jax.jit(lambda im, m: {k: images_lib.to_model_range(v, m[k], jnp)
                                                       for k, v in im.items()})
    return self._assemble(raw, self._images_on_device(raw["images"], raw["image_masks"]))

  def __iter__(self):
    return self

  def __next__(self):
    return self.next_batch()

  # Iterator state.

  def save_state(self, directory: str) -> None:
    """Writes this process's position (iterator incl. shuffle buffer) to `directory`."""
    import tensorflow as tf
    tf.io.gfile.makedirs(directory)
    tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(directory, "iterator"))
    stats_lib.write_json(os.path.join(directory, "data_state.json"),
                         {"batches": self.batches, "fingerprint": self.fingerprint()})

  def restore_state(self, directory: str) -> None:
    """Continues from a position written by save_state (same config, seed, batch and process)."""
    import tensorflow as tf
    path = os.path.join(directory, "data_state.json")
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"No data iterator state in {directory!r} (expected data_state.json).")
    with tf.io.gfile.GFile(path) as f:
      saved = json.load(f)
    self._check_fingerprint(saved["fingerprint"], directory)
    self._build(skip_batches=0)
    tf.train.Checkpoint(iterator=self._iterator).read(os.path.join(directory, "iterator")).assert_consumed()
    self.batches = int(saved["batches"])

  def _process_dir(self) -> str:
    return os.path.join(self.state_root, f"process_{self.process_index:05d}")

  def state(self) -> dict:
    """JSON-able position for the trainer's checkpoint metadata, identical on every process.

    It describes the position after the last batch returned by next_batch(): the batch count and the
    frames each process skips to get there (its seeds derive from config.data.seed and its index). With
    iterator_state="checkpoint" and a state_root, each process also writes its iterator to
    <state_root>/process_<i>/batch_<k> (the newest keep_iterator_states are kept); a restore without that
    directory falls back to replay.
    """
    if self.settings.iterator_state == "checkpoint" and self.state_root:
      import tensorflow as tf
      process_dir = self._process_dir()
      self.save_state(os.path.join(process_dir, f"batch_{self.batches:012d}"))
      kept = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(process_dir) if re.fullmatch(r"batch_\d+/?", d))
      for old in kept[:-max(1, self.settings.keep_iterator_states)]:
        tf.io.gfile.rmtree(os.path.join(process_dir, old))
    return {"batches": self.batches, "skip_frames": self._skip_frames(self.batches),
            "mode": self.settings.iterator_state, "fingerprint": self._stream_hash()}

  def _stream_hash(self) -> str:
    blob = json.dumps(self.fingerprint(with_process=False), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a `state()` dict: from the iterator checkpoint if there is one, else by replay."""
    import tensorflow as tf
    batches = int(state["batches"])
    if state.get("fingerprint") not in (None, self._stream_hash()):
      raise ValueError("The checkpoint's data state belongs to a different data stream (config, seed, batch size, "
                       "datasets or process count changed); refusing to continue a different stream silently.")
    if self.state_root and state.get("mode") == "checkpoint":
      directory = os.path.join(self._process_dir(), f"batch_{batches:012d}")
      if tf.io.gfile.exists(os.path.join(directory, "data_state.json")):
        try:
          self.restore_state(directory)
          return
        except (tf.errors.OpError, AssertionError, ValueError) as e:  # E.g. a truncated file or another
          # process count (global_batch split): the count still holds.
          log.warning("Could not read the data iterator checkpoint at %s (%s); replaying %d batches instead.",
                      directory, e, batches)
      else:
        log.warning("No data iterator checkpoint at %s; replaying %d batches instead.", directory, batches)
    self._build(skip_batches=batches)

  # Reporting and assets.

  def report(self) -> list[dict]:
    return [dict(p.report, weight=float(w)) for p, w in zip(self.plans, self.weights)]

  def report_lines(self) -> list[str]:
    return [f"dataset {r['dataset']!r} ({r['split']}): {r['episodes']} episodes, {r['frames']} frames, weight "
            f"{r['weight']:.4f}; {r['filtered_episodes']} filtered out, skipped {r['skipped_bad_episodes']} bad and "
            f"{r['skipped_short_episodes']} short episodes" for r in self.report()]

  def write_assets(self, directory: str) -> None:
    """norm_stats.json (SPEC format per dataset; top-level "norm_stats" too when there is one) + tokenizer."""
    import tensorflow as tf
    per_dataset = {p.source.name: {"norm_stats": p.norm_stats, "norm_mode": self.settings.norm_mode,
                                   "unnormalized_state_dims": list(p.spec.unnormalized_state_dims),
                                   "unnormalized_action_dims": list(p.spec.unnormalized_action_dims)}
                   for p in self.plans}
    blob: dict[str, Any] = {"datasets": per_dataset}
    if len(self.plans) == 1:
      blob = {**next(iter(per_dataset.values())), **blob}
    stats_lib.write_json(os.path.join(directory, "norm_stats.json"), blob)
    if self.settings.tokenizer and tf.io.gfile.exists(self.settings.tokenizer):
      tf.io.gfile.copy(self.settings.tokenizer, os.path.join(directory, "tokenizer.model"), overwrite=True)


# --- Entry points -----------------------------------------------------------------------------------


def make_data(data_config, model_config, *, global_batch: int, train: bool, mesh=None,
              data_axes: Sequence[str] = ("data",), seed: int = 0, workdir: str | None = None,
              process_index: int | None = None, process_count: int | None = None,
              tokenize_fn: Callable | None = None, specs: Mapping[str, DatasetSpec] | None = None) -> DataPipeline:
  """Builds the pipeline from `config.data` (fields: pi0_jax.data.config) and a Pi0Config.

  Every check that can fail (features, statistics, bad episodes, sizes) runs here, before any compile.
  process_index/count default to JAX's; tests pass them to simulate several hosts in one process.
  tokenize_fn(prompt) -> (int32 [max_token_len], bool [max_token_len]) replaces the config's tokenizer.
  specs replaces the dataset table (pi0_jax.data.specs.DATASETS).
  """
  settings = config_lib.settings_from_config(data_config, model_config, seed=seed, specs=specs)
  process_index, process_count = hosts.process_info(process_index, process_count)
  from pi0_jax.train import sharding  # pylint: disable=g-import-not-at-top
  # Divisible by the processes (and the mesh's data axes), or an error now.
  sharding.check_batch(global_batch, {} if mesh is None else mesh.shape, () if mesh is None else data_axes,
                       process_count=process_count)
  tokenize_fn = tokenize_fn or make_tokenize_fn(settings)  # Before the scans: a missing tokenizer fails fast.
  plans = [plan_dataset(i, s, settings, train=train, specs=specs) for i, s in enumerate(settings.datasets)]
  state_root = os.path.join(workdir, "data_state" if train else "eval_data_state") if workdir else None
  return DataPipeline(settings, plans, global_batch=global_batch, train=train, process_index=process_index,
                      process_count=process_count, mesh=mesh, data_axes=data_axes, tokenize_fn=tokenize_fn,
                      state_root=state_root)


def make_train_data(data_config, model_config, *, global_batch: int, **kwargs) -> DataPipeline:
  """Training stream: shuffled, mixed by n^0.43 (or explicit) weights, augmented."""
  return make_data(data_config, model_config, global_batch=global_batch, train=True, **kwargs)


def make_eval_data(data_config, model_config, *, global_batch: int, **kwargs) -> DataPipeline:
  """Evaluation stream over each dataset's eval_split: no augmentation, no shuffle, endless (take N batches)."""
  return make_data(data_config, model_config, global_batch=global_batch, train=False, **kwargs)


__all__ = ["DataPipeline", "DatasetPlan", "build_stream", "derive_seed", "episode_frames", "make_data",
           "make_eval_data", "make_train_data", "plan_dataset"]
