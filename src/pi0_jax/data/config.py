"""The data config (`config.data`, an ml_collections.ConfigDict) and its resolved, frozen form.

Fields (all optional except `datasets`):

  datasets              list of dicts, one per dataset:
      name              dataset name; picks its DatasetSpec (pi0_jax.data.specs) and names it in errors
      dir               prepared TFDS directory (.../<name>/<version>, or .../<name> for its newest version), or
      data_dir          TFDS root holding <name>/<version>/
      version           with data_dir or a .../<name> dir: which version (default: the newest)
      weight            explicit mixture weight (default: frames ** weight_exponent)
      spec              its DatasetSpec (default: the DATASETS entry called `name`): a DATASETS name,
                        "module:NAME" of a DatasetSpec, or a dict of DatasetSpec fields with `transform` and
                        `episode_filter` as "module:function" (pi0_jax.data.specs.resolve); checked here
      split             training split (default "train"); eval_split: evaluation split (default "val")
  weight_exponent       0.43: pi0's n^0.43 mixture rule
  seed                  None: the experiment's seed. Every random choice (file order, mixing, shuffle,
                        subsampling, augmentation) gets its own seed derived from it and the process index.
  shuffle_buffer        10_000 frames, held encoded (memory ~ buffer x encoded frame size)
  augment               True: crop/rotate (not wrist cameras) + colour jitter at training time; never at eval
  augment_params        dict overriding pi0_jax.data.image_ops.AugmentParams fields
  num_parallel_calls    2: parallel decode/augment and trajectory maps
  num_parallel_reads    1: files read in parallel per dataset
  threadpool_size       None: num_parallel_calls + 2 threads for the whole pipeline (tf.data private pool)
  ram_budget_gb         None: tf.data autotune's default RAM budget; else its cap in GiB
  prefetch_batches      2 batches decoded ahead
  norm_mode             "zscore" (pi0's default) or "quantile" (see pi0_jax.data.normalize)
  norm_stats            None, or a JSON of statistics to use instead of the training split's: SPEC's
                        {"norm_stats": ...} (one dataset) or {"datasets": {name: {"norm_stats": ...}}}
  stats_dir             statistics cache (default $PI0_STATS_CACHE or ~/.cache/pi0_jax/stats)
  tokenizer             sentencepiece model path (pi0_jax.data.tokenizer.PromptTokenizer)
  skip_bad_episodes     False: the first bad episode is an error; True: bad ones are skipped and counted
  min_episode_length    None: the action horizon; shorter episodes are bad input (1 keeps them, padded)
  max_frames_per_episode  None; else long episodes contribute a random subset of this many frames
  iterator_state        "replay" (default): the data position is the batch count; every process derives its
                        seeds from (seed, process index), so a restore re-creates the same stream and skips
                        that many frames before decoding (as big_vision and Octo resume). The position is a
                        few hundred bytes of checkpoint metadata whatever the shuffle buffer; the restore
                        re-reads the skipped frames (rate measured by benchmarks/data.py --measure_state).
                        "checkpoint": the trainer's state() also writes each process's tf.data iterator,
                        its shuffle buffer of encoded frames included, under <workdir>/data_state: about
                        shuffle_buffer x encoded frame bytes per process at every checkpoint, in exchange for
                        an immediate restore; for small buffers only
  keep_iterator_states  3 iterator checkpoints kept per process
  host_split            "episodes": each process reads a disjoint part of every dataset and mixes, shuffles and
                        batches it on its own (scales to any pod; the stream depends on the process count).
                        "global_batch": every process reads the same global stream and decodes only its
                        rows of each global batch, so batches are identical for any process count (reading
                        and shuffling are repeated per process: for small runs, evaluation and tests)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from pi0_jax.data.image_ops import AugmentParams

_DATASET_FIELDS = {"name", "dir", "data_dir", "version", "weight", "spec", "split", "eval_split"}


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """Where one dataset lies and how it enters the mixture."""

  name: str
  dir: str | None = None
  data_dir: str | None = None
  version: str | None = None
  weight: float | None = None
  spec: Any = None  # str, or a dict of DatasetSpec fields (kept JSON-able: it is part of the stream fingerprint)
  split: str = "train"
  eval_split: str = "val"

  def resolve_spec(self, specs: Mapping | None = None, index: int | None = None):
    from pi0_jax.data import specs as specs_lib
    where = f"config.data.datasets[{index}] ({self.name!r}).spec" if index is not None else None
    return specs_lib.resolve(self.spec, name=self.name, specs=specs, where=where)


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Everything that shapes the stream, resolved from the data config and the model config."""

  datasets: tuple[DatasetSource, ...]
  image_keys: tuple[str, ...]
  resolution: int
  action_dim: int
  horizon: int
  max_token_len: int
  seed: int = 0
  weight_exponent: float = 0.43
  shuffle_buffer: int = 10_000
  augment: bool = True
  augment_params: AugmentParams = AugmentParams()
  num_parallel_calls: int = 2
  num_parallel_reads: int = 1
  threadpool_size: int | None = None
  ram_budget_gb: float | None = None
  prefetch_batches: int = 2
  norm_mode: str = "zscore"
  norm_stats: str | None = None
  stats_dir: str | None = None
  tokenizer: str | None = None
  skip_bad_episodes: bool = False
  min_episode_length: int | None = None
  max_frames_per_episode: int | None = None
  iterator_state: str = "replay"
  keep_iterator_states: int = 3
  host_split: str = "episodes"

  @property
  def min_length(self) -> int:
    return self.horizon if self.min_episode_length is None else max(1, int(self.min_episode_length))


def _plain(x):
  return x.to_dict() if hasattr(x, "to_dict") else x


def settings_from_config(data_config, model_config, *, seed: int = 0, specs: Mapping | None = None) -> DataSettings:
  """Resolves `config.data` against a Pi0Config; unknown fields are an error (typos must not pass silently).

  Every dataset's spec is resolved here too (specs: the table names refer to; default specs.DATASETS), so a
  bad spec fails with the dataset and field named before any data is opened.
  """
  d = dict(_plain(data_config))
  known = {f.name for f in dataclasses.fields(DataSettings)} - {"image_keys", "resolution", "action_dim", "horizon",
                                                                "max_token_len"}
  unknown = set(d) - known
  if unknown:
    raise ValueError(f"config.data: unknown fields {sorted(unknown)}; known fields are {sorted(known)} "
                     "(see pi0_jax.data.config).")
  raw = d.pop("datasets", None)
  if not raw:
    raise ValueError("config.data.datasets: at least one dataset is needed, e.g. [dict(name=..., dir=...)].")
  sources = []
  for i, entry in enumerate(raw):
    entry = dict(_plain(entry))
    bad = set(entry) - _DATASET_FIELDS
    if bad or "name" not in entry:
      raise ValueError(f"config.data.datasets[{i}]: {'unknown fields ' + str(sorted(bad)) if bad else 'no name'}; "
                       f"fields are {sorted(_DATASET_FIELDS)}.")
    if not entry.get("dir") and not entry.get("data_dir"):
      raise ValueError(f"config.data.datasets[{i}] ({entry['name']!r}): give `dir` or `data_dir`.")
    if entry.get("spec") is not None and not isinstance(entry["spec"], str):
      entry["spec"] = dict(_plain(entry["spec"]))
    sources.append(DatasetSource(**entry))
  for i, source in enumerate(sources):
    source.resolve_spec(specs, i)
  names = [s.name for s in sources]
  if len(set(names)) != len(names):
    raise ValueError(f"config.data.datasets: dataset names must be unique, got {names}.")
  if d.get("seed") is None:
    d["seed"] = seed
  params = d.pop("augment_params", None)
  if params:
    params = dict(_plain(params))
    for k in ("contrast", "saturation"):
      if k in params:
        params[k] = tuple(params[k])
    d["augment_params"] = AugmentParams(**params)
  d = {k: v for k, v in d.items() if v is not None}  # None means the default.
  settings = DataSettings(datasets=tuple(sources), image_keys=tuple(model_config.image_keys),
                          resolution=int(model_config.image_resolution), action_dim=int(model_config.action_dim),
                          horizon=int(model_config.action_horizon), max_token_len=int(model_config.max_token_len),
                          **d)
  if settings.norm_mode not in ("zscore", "quantile"):
    raise ValueError(f"config.data.norm_mode {settings.norm_mode!r}: expected 'zscore' or 'quantile'.")
  if settings.iterator_state not in ("checkpoint", "replay"):
    raise ValueError(f"config.data.iterator_state {settings.iterator_state!r}: expected 'checkpoint' or 'replay'.")
  if settings.host_split not in ("episodes", "global_batch"):
    raise ValueError(f"config.data.host_split {settings.host_split!r}: expected 'episodes' or 'global_batch'.")
  if settings.shuffle_buffer < 1:
    raise ValueError(f"config.data.shuffle_buffer must be >= 1, got {settings.shuffle_buffer}.")
  return settings


def describe(settings: DataSettings) -> dict[str, Any]:
  """JSON-able view of the settings (stored with iterator states, to refuse restoring into another stream)."""
  def conv(x):
    if dataclasses.is_dataclass(x):
      return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (tuple, list)):
      return [conv(v) for v in x]
    if isinstance(x, Mapping):
      return {k: conv(v) for k, v in x.items()}
    return x
  return conv(settings)
