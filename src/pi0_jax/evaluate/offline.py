"""Offline evaluation on held-out data: flow-matching loss by flow time, and sampled chunks vs ground truth.

Data groups (each evaluated on its own, `batches` batches of the eval pipeline, no augmentation):
  "<dataset>/val"      the validation split of every training dataset (the split named by its `eval_split`,
                       default "val"), normalised with that dataset's own training statistics;
  "<dataset>/heldout"  every split of each held-out dataset (default `metaworld_ml10_test`: the ML10 test
                       classes, which the policy never trained on), normalised with the statistics the policy
                       uses (`dataset`), exactly as it would see them at inference time.

Metrics:
  loss by t bin   the flow-matching loss (pi0's compute_loss, per action step, real dims only) with the flow
                  time t drawn uniformly inside each of `num_bins` equal bins of (0, 1] (and fresh noise per
                  bin): where along the flow the model is good or bad. `loss` is the mean over bins, i.e. the
                  loss under uniform t (training draws t from Beta(1.5, 1)). Means are over real action steps.
  MSE / L1        chunks sampled from noise (`num_steps` Euler steps) and the ground-truth chunks, both
                  unnormalised with the dataset's statistics and cut to the robot's action dims, compared on
                  the real steps (pad mask) and dims: per group, per task (the instruction, named by its
                  Meta-World task when it is one), per action dimension and per horizon step.
  baseline        the same MSE / L1 for the mean-action baseline: it always outputs the training dataset's
                  mean action (zeros in z-score space).

Everything model-side runs jitted on a device mesh built like the trainer's (params sharded by the same rules,
batches split over the data axes), so it runs on one CPU, a GPU or every host of a pod; outputs come back
replicated and every process accumulates the same numbers (process 0 writes the report). Episodes are read in
stored order: when `batches` batches cannot hold every frame of a group, each episode contributes a seeded
random subset of its frames (`max_frames_per_episode`), so the budget spreads over all episodes and tasks
instead of stopping after the first few.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from pi0_jax import export as export_lib, files, logs
from pi0_jax.data import normalize, stats as stats_lib
from pi0_jax.envs import metaworld as mw

log = logging.getLogger(__name__)

VAL, HELDOUT = "val", "heldout"


@dataclasses.dataclass(frozen=True)
class OfflineSettings:
  batches: int = 50  # Per group; 0: one pass over the group's frames.
  batch_size: int | None = None  # Global batch; None: the training run's.
  num_bins: int = 10
  num_steps: int = 10  # Euler steps of the sampler.
  seed: int = 0
  examples: int = 4  # Chunks kept per group for the report's plot.
  stats_dir: str | None = None  # Scan cache of the data pipeline; None: the run's, else the default cache.

  def __post_init__(self):
    if self.batches < 0:
      raise ValueError(f"offline batches: expected >= 0 (0: one pass), got {self.batches}")
    if self.batch_size is not None and self.batch_size < 1:
      raise ValueError(f"offline batch size: expected >= 1, got {self.batch_size}")
    if self.num_bins < 1:
      raise ValueError(f"t bins: expected >= 1, got {self.num_bins}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps: expected >= 1 Euler step, got {self.num_steps}")


@dataclasses.dataclass(frozen=True)
class ActionStats:
  """How a dataset's actions were normalised: what unnormalises the model's chunks."""

  dataset: str
  stats: dict[str, np.ndarray]  # stats_lib.as_arrays of norm_stats["actions"]
  mode: str
  skip: np.ndarray  # bool [dim]: dims left unnormalised

  @property
  def dim(self) -> int:
    return int(self.stats["mean"].shape[0])

  @classmethod
  def from_entry(cls, dataset: str, entry: Mapping[str, Any], default_mode: str = "zscore") -> "ActionStats":
    arrays = stats_lib.as_arrays(entry["norm_stats"]["actions"])
    dim = int(arrays["mean"].shape[0])
    return cls(dataset, arrays, entry.get("norm_mode", default_mode),
               normalize.skip_mask(dim, entry.get("unnormalized_action_dims", ())))

  def unnormalize(self, x: np.ndarray) -> np.ndarray:
    """[..., >= dim] normalised, zero-padded -> [..., dim] in the robot's units."""
    return normalize.unnormalize_np(np.asarray(x)[..., :self.dim], self.stats, self.mode, self.skip)


@dataclasses.dataclass(frozen=True)
class EvalGroup:
  """One evaluated set of data: data-config dataset entries plus the statistics that normalise them."""

  name: str
  kind: str  # VAL or HELDOUT
  sources: tuple[dict, ...]  # config.data.datasets entries (name, dir, spec, split, eval_split)
  norm_entry: dict  # norm_stats.json entry (norm_stats, norm_mode, unnormalized_*_dims) used for every source
  # Meta-World task classes the datasets hold (from build_metaworld's build_report.json), if known: prompts cut
  # at the model's max_token_len are told apart among these only.
  tasks: tuple[str, ...] | None = None

  @property
  def action_stats(self) -> ActionStats:
    return ActionStats.from_entry(self.name, self.norm_entry)


# ---------------------------------------------------------------------------------------------------------------
# Which data.


def _dataset_location(source: Mapping[str, Any], data_dir: str | None) -> dict:
  """dir/data_dir/version of a training dataset entry, moved under `data_dir` when one is given."""
  if data_dir:
    return {"dir": os.path.join(data_dir, source["name"]), "version": source.get("version")}
  return {k: source.get(k) for k in ("dir", "data_dir", "version")}


def default_data_dir(train_data: Mapping[str, Any]) -> str | None:
  """The folder holding the training datasets' folders (where build_metaworld wrote them), from the config."""
  for source in train_data.get("datasets") or []:
    if source.get("data_dir"):
      return source["data_dir"]
    directory = (source.get("dir") or "").rstrip("/")
    if directory:
      # .../<name>/<version> (holding dataset_info.json) or .../<name>.
      if os.path.exists(os.path.join(directory, "dataset_info.json")):
        directory = os.path.dirname(directory)
      return os.path.dirname(directory)
  return None


def _open(name: str, location: Mapping[str, Any]):
  from pi0_jax.data import rlds  # pylint: disable=g-import-not-at-top
  return rlds.open_builder(name, dir=location.get("dir"), data_dir=location.get("data_dir"),
                           version=location.get("version"))


def _built_tasks(builder) -> tuple[str, ...] | None:
  """The task classes in a dataset's build_report.json (Meta-World demo datasets), else None."""
  from pi0_jax.data import build_metaworld  # pylint: disable=g-import-not-at-top
  tasks = (build_metaworld.read_build_report(str(builder.data_dir)) or {}).get("tasks")
  return tuple(tasks) if tasks else None


def eval_groups(train_data: Mapping[str, Any], norm_stats: Mapping[str, Any], *, policy_dataset: str | None,
                data_dir: str | None, heldout: Sequence[str] | None) -> list[EvalGroup]:
  """The evaluation groups (see the module docstring).

  `heldout` None means the default `metaworld_ml10_test` under the data directory, skipped with a warning when
  it is not there; named datasets must exist. Datasets are looked up under `data_dir` when given, else where the
  training config put them.
  """
  from pi0_jax.data import specs as specs_lib  # pylint: disable=g-import-not-at-top
  per_dataset = norm_stats.get("datasets") or {}
  groups = []
  train_names = []
  for source in train_data.get("datasets") or []:
    name = source["name"]
    train_names.append(name)
    split = source.get("eval_split") or "val"
    location = _dataset_location(source, data_dir)
    builder = _open(name, location)
    if split not in builder.info.splits:
      log.warning("offline: dataset %r has no %r split (splits: %s); its validation group is skipped.", name, split,
                  sorted(builder.info.splits))
      continue
    if name not in per_dataset:
      raise ValueError(f"the export's norm_stats.json has no statistics for training dataset {name!r} (it has "
                       f"{sorted(per_dataset)})")
    entry = dict(name=name, spec=source.get("spec") or name, split=split, eval_split=split,
                 **{k: v for k, v in location.items() if v})
    groups.append(EvalGroup(f"{name}/{VAL}", VAL, (entry,), dict(per_dataset[name]), _built_tasks(builder)))

  _, policy_entry = export_lib.norm_stats_entry(norm_stats, policy_dataset)
  explicit = heldout is not None
  root = data_dir or default_data_dir(train_data)
  for name in (heldout if explicit else ["metaworld_ml10_test"]):
    if name in train_names:
      raise ValueError(f"held-out dataset {name!r} is a training dataset of this export")
    location = {"dir": os.path.join(root, name)} if root else {}
    if not explicit and not (root and os.path.isdir(location["dir"])):
      log.warning("offline: no held-out dataset %r under %s; pass --heldout_datasets / --data_dir to evaluate one.",
                  name, root)
      continue
    if not location:
      raise ValueError(f"held-out dataset {name!r}: no data directory (pass --data_dir)")
    builder = _open(name, location)
    spec = name if name in specs_lib.DATASETS else (train_data["datasets"][0].get("spec") or
                                                   train_data["datasets"][0]["name"])
    sources = tuple(dict(name=f"{name}-{split}", spec=spec, split=split, eval_split=split, **location)
                    for split in sorted(builder.info.splits))
    groups.append(EvalGroup(f"{name}/{HELDOUT}", HELDOUT, sources, dict(policy_entry), _built_tasks(builder)))
  if not groups:
    raise ValueError("offline: nothing to evaluate: no training dataset has a validation split and no held-out "
                     "dataset was found (pass --data_dir / --heldout_datasets, or --skip_offline)")
  return groups


# ---------------------------------------------------------------------------------------------------------------
# Host-side metrics.


def task_name(instruction: str) -> str:
  """The Meta-World task whose instruction this is, else the instruction itself."""
  return _INSTRUCTION_TASKS.get(instruction.strip(), instruction.strip())


_INSTRUCTION_TASKS = {v: k for k, v in mw.TASK_INSTRUCTIONS.items()}


def _zeros_like_row(dim: int) -> dict[str, np.ndarray]:
  return {k: np.zeros(dim, np.float64) for k in ("sq", "abs", "base_sq", "base_abs", "count")}


class ChunkMetrics:
  """Accumulates masked errors of unnormalised chunks (and per-bin losses) by task, action dim and step.

  add() takes one batch; result() gives the means. Every error is over real entries only: steps whose pad
  mask is True and the dataset's real action dims (its statistics' length, within the dim mask).
  """

  def __init__(self, horizon: int, num_bins: int, examples: int = 0):
    self.horizon, self.num_bins, self.max_examples = horizon, num_bins, examples
    self.tasks: dict[str, dict[str, Any]] = {}
    self.dims: dict[str, np.ndarray] = {}
    self.steps = {k: np.zeros(horizon, np.float64) for k in ("sq", "base_sq", "count")}
    self.loss_sums = np.zeros(num_bins, np.float64)
    self.loss_steps = 0.0
    self.frames = 0
    self.examples: list[dict[str, Any]] = []

  def _task(self, task: str, instruction: str) -> dict[str, Any]:
    if task not in self.tasks:
      self.tasks[task] = {"instruction": instruction, "frames": 0, "loss_sum": 0.0, "loss_steps": 0.0,
                          **{k: 0.0 for k in ("sq", "abs", "base_sq", "base_abs", "count")}}
    return self.tasks[task]

  def _dims(self, dim: int) -> dict[str, np.ndarray]:
    have = len(self.dims.get("count", ()))
    if have < dim:
      grown = _zeros_like_row(dim)
      for k, v in self.dims.items():
        grown[k][:have] = v
      self.dims = grown
    return self.dims

  def add(self, *, pred: np.ndarray, actions: np.ndarray, action_pad_mask: np.ndarray, action_dim_mask: np.ndarray,
          instructions: Sequence[str], action_stats: Sequence[ActionStats], loss_sums: np.ndarray | None = None):
    """One batch: pred/actions normalised [B, H, A], masks [B, H] and [B, A], per-example instruction and stats.

    loss_sums [num_bins, B]: per example, the sum over its real steps of the per-step loss in each t bin.
    """
    pred, actions = np.asarray(pred, np.float32), np.asarray(actions, np.float32)
    pad, dim_mask = np.asarray(action_pad_mask, bool), np.asarray(action_dim_mask, bool)
    b, h, _ = actions.shape
    if h != self.horizon or pred.shape != actions.shape:
      raise ValueError(f"ChunkMetrics.add: pred {pred.shape} and actions {actions.shape}; expected equal shapes "
                       f"with horizon {self.horizon}")
    if len(instructions) != b or len(action_stats) != b:
      raise ValueError(f"ChunkMetrics.add: {len(instructions)} instructions and {len(action_stats)} stats for a "
                       f"batch of {b}")
    for i in range(b):
      st = action_stats[i]
      d = st.dim
      gt = st.unnormalize(actions[i])
      out = st.unnormalize(pred[i])
      base = np.broadcast_to(st.stats["mean"], gt.shape)
      mask = (pad[i][:, None] & dim_mask[i, :d][None, :]).astype(np.float64)
      err, base_err = (out - gt).astype(np.float64), (base - gt).astype(np.float64)
      task = task_name(instructions[i])
      row = self._task(task, instructions[i].strip())
      row["frames"] += 1
      row["sq"] += float(np.sum(err**2 * mask))
      row["abs"] += float(np.sum(np.abs(err) * mask))
      row["base_sq"] += float(np.sum(base_err**2 * mask))
      row["base_abs"] += float(np.sum(np.abs(base_err) * mask))
      row["count"] += float(mask.sum())
      dims = self._dims(d)
      dims["sq"][:d] += np.sum(err**2 * mask, 0)
      dims["abs"][:d] += np.sum(np.abs(err) * mask, 0)
      dims["base_sq"][:d] += np.sum(base_err**2 * mask, 0)
      dims["base_abs"][:d] += np.sum(np.abs(base_err) * mask, 0)
      dims["count"][:d] += mask.sum(0)
      self.steps["sq"] += np.sum(err**2 * mask, 1)
      self.steps["base_sq"] += np.sum(base_err**2 * mask, 1)
      self.steps["count"] += mask.sum(1)
      if loss_sums is not None:
        valid = float(pad[i].sum())
        self.loss_sums += np.asarray(loss_sums, np.float64)[:, i]
        self.loss_steps += valid
        row["loss_sum"] += float(np.mean(np.asarray(loss_sums, np.float64)[:, i]))
        row["loss_steps"] += valid
      self.frames += 1
      if len(self.examples) < self.max_examples:
        self.examples.append({"task": task, "instruction": instructions[i].strip(), "dataset": st.dataset,
                              "ground_truth": gt.tolist(), "prediction": out.tolist(),
                              "baseline": np.asarray(base).tolist(), "pad_mask": pad[i].tolist()})

  @staticmethod
  def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
      out = np.where(den > 0, num / np.maximum(den, 1e-300), np.nan)
    return out

  def result(self) -> dict[str, Any]:
    """Means over everything added (NaN where nothing was counted; JSON writes it as null)."""
    total = {k: sum(t[k] for t in self.tasks.values()) for k in ("sq", "abs", "base_sq", "base_abs", "count")}
    r = lambda n, d: _num(self._ratio(n, d))  # noqa: E731
    bins = self._ratio(self.loss_sums, self.loss_steps)
    edges = np.linspace(0.0, 1.0, self.num_bins + 1)
    out = {
        "frames": self.frames,
        "mse": r(total["sq"], total["count"]), "l1": r(total["abs"], total["count"]),
        "baseline": {"mse": r(total["base_sq"], total["count"]), "l1": r(total["base_abs"], total["count"])},
        "loss": _num(np.mean(bins)) if self.loss_steps else None,
        "loss_by_bin": {"edges": edges.tolist(), "loss": _num(bins) if self.loss_steps else None},
        "per_task": {
            task: {"instruction": t["instruction"], "frames": t["frames"],
                   "loss": r(t["loss_sum"], t["loss_steps"]) if t["loss_steps"] else None,
                   "mse": r(t["sq"], t["count"]), "l1": r(t["abs"], t["count"]),
                   "baseline_mse": r(t["base_sq"], t["count"]), "baseline_l1": r(t["base_abs"], t["count"])}
            for task, t in sorted(self.tasks.items())},
        "per_dim": {"mse": r(self.dims.get("sq", []), self.dims.get("count", [])),
                    "l1": r(self.dims.get("abs", []), self.dims.get("count", [])),
                    "baseline_mse": r(self.dims.get("base_sq", []), self.dims.get("count", [])),
                    "baseline_l1": r(self.dims.get("base_abs", []), self.dims.get("count", []))},
        "per_step": {"mse": r(self.steps["sq"], self.steps["count"]),
                     "baseline_mse": r(self.steps["base_sq"], self.steps["count"])},
        "examples": self.examples,
    }
    return out


def _num(x):
  """float / list of floats with NaN as None (valid JSON)."""
  x = np.asarray(x, np.float64)
  if x.ndim == 0:
    return None if not np.isfinite(x) else float(x)
  return [None if not np.isfinite(v) else float(v) for v in x]


# ---------------------------------------------------------------------------------------------------------------
# Device side.


def bin_edges(num_bins: int) -> np.ndarray:
  return np.linspace(0.0, 1.0, num_bins + 1, dtype=np.float32)


def bin_times(rng, bin_index, num_bins: int, batch: int):
  """Flow times for bin `bin_index`: uniform in (lo, hi] of that bin, one per example."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  edges = jnp.asarray(bin_edges(num_bins))
  lo, hi = edges[bin_index], edges[bin_index + 1]
  return hi - (hi - lo) * jax.random.uniform(rng, (batch,), jnp.float32)


def bin_draws(rng, bin_index, num_bins: int, shape):
  """(noise [B, H, A], time [B]) of one t bin; `rng` is the batch's key."""
  import jax  # pylint: disable=g-import-not-at-top
  noise_rng, time_rng = jax.random.split(jax.random.fold_in(rng, bin_index))
  return jax.random.normal(noise_rng, shape), bin_times(time_rng, bin_index, num_bins, shape[0])


def make_eval_step(model, num_bins: int, num_steps: int):
  """eval_step(params, batch, rng) -> per-bin loss sums [num_bins, B], sampled chunks and the batch's targets.

  Bin i uses noise and times from `bin_draws(rng, i, ...)`; the sampler's noise comes from fold_in(rng,
  num_bins).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def eval_step(params, batch, rng):
    obs, actions = batch["observation"], batch["actions"]
    variables = {"params": params}

    def one_bin(i):
      noise, time = bin_draws(rng, i, num_bins, actions.shape)
      per_step = model.apply(variables, obs, actions, method="compute_loss", rng=rng, noise=noise, time=time,
                             action_pad_mask=batch["action_pad_mask"], action_dim_mask=batch["action_dim_mask"])
      return jnp.sum(per_step, axis=-1)

    # A loop, not num_bins copies of the model in one program: compiles once for any number of bins.
    loss_sums = jax.lax.map(one_bin, jnp.arange(num_bins))
    pred = model.apply(variables, obs, rng=jax.random.fold_in(rng, num_bins), num_steps=num_steps,
                       method="sample_actions")
    return {"loss_sums": loss_sums, "pred": pred, "actions": actions, "action_pad_mask": batch["action_pad_mask"],
            "action_dim_mask": batch["action_dim_mask"], "dataset_index": batch["dataset_index"],
            "tokenized_prompt": obs.tokenized_prompt, "tokenized_prompt_mask": obs.tokenized_prompt_mask}

  return eval_step


# ---------------------------------------------------------------------------------------------------------------
# Driver.


def _frames_cap(lengths: Sequence[int], target: int) -> int | None:
  """Smallest per-episode frame cap k with sum(min(n, k)) >= target; None when all frames are needed."""
  lengths = np.asarray(lengths, np.int64)
  if lengths.sum() <= target:
    return None
  lo, hi = 1, int(lengths.max())
  while lo < hi:
    mid = (lo + hi) // 2
    if np.minimum(lengths, mid).sum() >= target:
      hi = mid
    else:
      lo = mid + 1
  return lo


def group_data_config(group: EvalGroup, train_data: Mapping[str, Any], *, tokenizer: str, norm_stats_path: str,
                      settings: OfflineSettings, max_frames: int | None) -> dict:
  """The data config of one group: the run's settings, the group's datasets, the export's tokenizer."""
  cfg = {k: v for k, v in dict(train_data).items() if k != "datasets"}
  # host_split "global_batch": every process reads the (small) eval splits whole and decodes its rows of each
  # global batch, so no process runs short of episodes and the numbers do not depend on the process count.
  cfg.update(datasets=[dict(s) for s in group.sources], tokenizer=tokenizer, norm_stats=norm_stats_path,
             skip_bad_episodes=True, max_frames_per_episode=max_frames, seed=settings.seed,
             stats_dir=settings.stats_dir or train_data.get("stats_dir"), host_split="global_batch")
  return cfg


def _batch_size(settings: OfflineSettings, train_config: Mapping, mesh, data_axes: Sequence[str]) -> int:
  """The global eval batch: the setting, else the run's, rounded up to fit the data-parallel size and hosts."""
  import jax  # pylint: disable=g-import-not-at-top
  from pi0_jax.train import sharding  # pylint: disable=g-import-not-at-top
  dp = sharding.data_parallel_size(mesh, data_axes)
  step_count = max(1, jax.process_count())
  batch = int(settings.batch_size or train_config.get("global_batch") or 32)
  unit = math.lcm(dp, step_count)
  if batch % unit:
    rounded = -(-batch // unit) * unit
    log.warning("offline: batch %d is not divisible by the data-parallel size %d and process count %d; using %d",
                batch, dp, step_count, rounded)
    batch = rounded
  return batch


def _group_data(cfg: dict, model_config, settings: OfflineSettings, *, batch: int, mesh,
                data_axes: Sequence[str]) -> tuple[Any, dict]:
  """The eval pipeline of one group's data config, its frame budget spread over every episode, and its sizes.

  Plans first (every check, and the episode lengths), then sizes the per-episode frame cap to the budget.
  """
  from pi0_jax.data import config as config_lib, pipeline  # pylint: disable=g-import-not-at-top
  data_settings = config_lib.settings_from_config(cfg, model_config, seed=settings.seed)
  lengths = []
  for i, source in enumerate(data_settings.datasets):
    plan = pipeline.plan_dataset(i, source, data_settings, train=False)
    record = stats_lib.load_or_scan(plan.builder, source.name, plan.spec, plan.split,
                                    cache_dir=data_settings.stats_dir,
                                    num_parallel_calls=data_settings.num_parallel_calls)
    lengths += [n for n in record["episode_lengths"]["length"] if n >= data_settings.min_length]
  total_frames = int(sum(lengths))
  wanted = settings.batches or math.ceil(total_frames / batch)
  cap = _frames_cap(lengths, wanted * batch)
  frames_used = int(np.minimum(lengths, cap).sum()) if cap else total_frames
  sizes = {"batches": min(wanted, math.ceil(frames_used / batch)), "batch_size": batch,
           "frames_in_split": total_frames, "max_frames_per_episode": cap}
  data = pipeline.make_eval_data(dict(cfg, max_frames_per_episode=cap), model_config, global_batch=batch, mesh=mesh,
                                 data_axes=data_axes, seed=settings.seed)
  return data, sizes


def _evaluate_group(group: EvalGroup, data, num_batches: int, *, eval_step, params, mesh, key, instruction,
                    horizon: int, settings: OfflineSettings, progress: bool) -> dict[str, Any]:
  """Runs `num_batches` eval steps over one group's data; returns ChunkMetrics.result()."""
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  stats = group.action_stats
  metrics = ChunkMetrics(horizon, settings.num_bins, settings.examples)
  bar = tqdm(range(num_batches), desc=f"offline {group.name}", unit="batch",
             disable=not (progress and jax.process_index() == 0), dynamic_ncols=True)
  for b in bar:
    with jax.set_mesh(mesh):
      out = eval_step(params, data.next_batch(), jax.random.fold_in(key, b))
    out = jax.device_get(out)
    texts = [instruction(t, m) for t, m in zip(out["tokenized_prompt"], out["tokenized_prompt_mask"])]
    metrics.add(pred=out["pred"], actions=out["actions"], action_pad_mask=out["action_pad_mask"],
                action_dim_mask=out["action_dim_mask"], instructions=texts, action_stats=[stats] * len(texts),
                loss_sums=out["loss_sums"])
    mse = metrics.result()["mse"]
    if mse is not None:
      bar.set_postfix(mse=f"{mse:.4g}", refresh=False)
  bar.close()
  return metrics.result()


def run_offline(export_dir: str, groups: Sequence[EvalGroup], settings: OfflineSettings, *, train_config: Mapping,
                mesh_axes: Sequence[Sequence[Any]] | None = None, progress: bool = True) -> dict[str, Any]:
  """Evaluates every group (module docstring); returns {"settings", "mesh", "groups": [...]} (JSON-able)."""
  import jax  # pylint: disable=g-import-not-at-top
  from pi0_jax.data.tokenizer import PromptTokenizer  # pylint: disable=g-import-not-at-top
  from pi0_jax.model import Pi0, Pi0Config  # pylint: disable=g-import-not-at-top
  from pi0_jax.train import setup  # pylint: disable=g-import-not-at-top

  train_data = dict(train_config.get("data") or {})
  data_axes = tuple(train_config.get("data_axes") or ("data",))
  fsdp_axes = tuple(train_config.get("fsdp_axes") or ())
  mesh = setup.eval_mesh(mesh_axes or train_config.get("mesh") or [["data", -1]], data_axes, fsdp_axes)
  model_config = Pi0Config.from_dict(export_lib.read_export_json(export_dir, "model_config.json")).replace(
      activation_batch_axes=data_axes)
  batch = _batch_size(settings, train_config, mesh, data_axes)
  tokenizer_path = os.path.join(export_dir, "tokenizer.model")
  tokenizer = PromptTokenizer(tokenizer_path, model_config.max_token_len)
  with jax.set_mesh(mesh):
    params = export_lib.load_params(export_lib.params_dir(export_dir), model_config, mesh=mesh,
                                    rules=train_config.get("sharding_rules") or [[".*", "auto"]],
                                    fsdp_axes=fsdp_axes, note="the export's params do not fit its model_config.json")
  eval_step = logs.log_first_call(
      setup.jit_eval_step(make_eval_step(Pi0(model_config), settings.num_bins, settings.num_steps), mesh),
      "the offline eval step")
  base_key = jax.random.key(settings.seed)
  results = []
  with tempfile.TemporaryDirectory(prefix="pi0_eval_") as tmp:
    for g, group in enumerate(groups):
      norm_path = os.path.join(tmp, f"norm_stats_{g}.json")
      files.write_json(norm_path, {"datasets": {s["name"]: group.norm_entry for s in group.sources}})
      cfg = group_data_config(group, train_data, tokenizer=tokenizer_path, norm_stats_path=norm_path,
                              settings=settings, max_frames=None)
      data, sizes = _group_data(cfg, model_config, settings, batch=batch, mesh=mesh, data_axes=data_axes)
      # Known Meta-World instructions (of the group's tasks, else all) are recognised even when cut at
      # max_token_len; other prompts are decoded.
      known = [mw.TASK_INSTRUCTIONS[t] for t in (group.tasks or mw.TASK_INSTRUCTIONS) if t in mw.TASK_INSTRUCTIONS]
      result = _evaluate_group(group, data, sizes["batches"], eval_step=eval_step, params=params, mesh=mesh,
                               key=jax.random.fold_in(base_key, g), instruction=tokenizer.decoder(known),
                               horizon=model_config.action_horizon, settings=settings, progress=progress)
      stats = group.action_stats
      result.update(group=group.name, kind=group.kind, datasets=data.report(), **sizes, norm_mode=stats.mode,
                    action_dim=stats.dim)
      results.append(result)
  return {"settings": dataclasses.asdict(settings) | {"batch_size": batch},
          "mesh": {k: int(v) for k, v in mesh.shape.items()}, "groups": results}


__all__ = ["ActionStats", "ChunkMetrics", "EvalGroup", "OfflineSettings", "bin_draws", "bin_edges",
           "default_data_dir", "eval_groups", "group_data_config", "make_eval_step", "run_offline",
           "task_name"]
