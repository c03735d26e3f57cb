"""Meta-World scripted-expert demonstrations written as RLDS datasets (TFDS, tfrecord).

  python -m pi0_jax.data.build_metaworld --out_dir=/data/mw --episodes_per_task=20

writes `metaworld_ml10_train` (the 10 ML10 train classes) and `metaworld_ml10_test`
(the 5 held-out classes) under --out_dir. Read them back without this module:
`tfds.builder_from_directory(dir).as_dataset(split="train")`.

Demonstrations come from Meta-World's scripted policies on goal-visible MT1
tasks: ML tasks zero the goal in the observation and the scripted policies then
fail. Every episode gets its own task variant (object and goal positions) drawn
from seeded MT1 benchmarks; only successful episodes are kept.

Building is two passes per task. The first rolls out attempts without rendering
(about a millisecond a step) to learn which variants succeed and how long they
run; it fixes the train/val split and the progress bar's total before anything
is written. The second replays exactly those variants with rendering. Both
physics and the policies are deterministic, which the replay checks. Splits:
"val" holds the first max(1, round(val_fraction * N)) kept episodes of each
task (none when N < 2), "train" the rest, so statistics can leave val out.
Per-task counts (attempted / kept / train / val) go to the console and to
build_report.json in the dataset directory.

Simulation and rendering run in spawned worker processes: MuJoCo's EGL
rendering segfaults in a process that has imported TensorFlow (seen with
tensorflow-cpu 2.21 and Mesa's llvmpipe), and TFDS needs TensorFlow to write.
Tasks, variants, scripted experts and cameras are pi0_jax.envs.metaworld's,
which the closed-loop evaluator shares; this module plans, replays and writes.

Each step holds the observation before its action:
  observation/image        uint8 [S, S, 3]  scene camera (default "corner"), right side up
  observation/wrist_image  uint8 [S, S, 3]  gripper camera (default "gripperPOV")
  observation/state        float32 [4]      hand xyz + gripper opening (obs[:4])
  observation/env_state    float32 [39]     the full Meta-World observation, goal included
  action                   float32 [4]      clipped to [-1, 1]
  reward, discount         float32
  is_first, is_last, is_terminal  bool      the last step is terminal: the task is solved there
  language_instruction     string           TASK_INSTRUCTIONS[task]
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import shutil
import time
import warnings
from typing import Any, Iterator, Sequence

import numpy as np

from pi0_jax import files
from pi0_jax.envs.metaworld import (ACTION_DIM, CAMERAS, ENV_STATE_DIM, ML10_TEST_TASKS, ML10_TRAIN_TASKS,
                                    STATE_DIM, TASK_INSTRUCTIONS, RenderOptions)
from pi0_jax.envs import metaworld as mw

# Split set -> (dataset name, its task classes). Names stay clear of TFDS catalog entries, which would
# send TFDS to the network.
SPLIT_SETS = {
    "train": ("metaworld_ml10_train", ML10_TRAIN_TASKS),
    "test": ("metaworld_ml10_test", ML10_TEST_TASKS),
}

REPORT_FILE = "build_report.json"


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """Everything that changes the written data; stored with the dataset so a rebuild can tell if it matches."""

  episodes_per_task: int = 10
  image_size: int = 64
  seed: int = 0
  max_steps: int = 500
  steps_after_success: int = 5
  val_fraction: float = 0.1
  max_attempts_factor: int = 4
  scene_camera: str = "corner"
  wrist_camera: str = "gripperPOV"
  encoding_format: str = "jpeg"
  antialias_samples: int = 0

  def __post_init__(self):
    if self.episodes_per_task < 1:
      raise ValueError(f"episodes_per_task: expected >= 1, got {self.episodes_per_task}")
    mw.check_max_steps(self.max_steps)
    if self.steps_after_success < 0:
      raise ValueError(f"steps_after_success: expected >= 0, got {self.steps_after_success}")
    if not 0.0 <= self.val_fraction < 1.0:
      raise ValueError(f"val_fraction: expected in [0, 1), got {self.val_fraction}")
    if self.max_attempts_factor < 1:
      raise ValueError(f"max_attempts_factor: expected >= 1, got {self.max_attempts_factor}")
    _ = self.render  # RenderOptions checks the camera settings.
    if self.encoding_format not in ("jpeg", "png"):
      raise ValueError(f"encoding_format: expected 'jpeg' or 'png', got {self.encoding_format!r}")

  @property
  def render(self) -> RenderOptions:
    """The camera settings, which closed-loop evaluation must render with."""
    return RenderOptions.from_build_options(dataclasses.asdict(self))

  @property
  def num_val(self) -> int:
    """Validation episodes per task: the fraction, but at least one whenever a train episode remains."""
    if self.val_fraction == 0.0 or self.episodes_per_task < 2:
      return 0
    return min(self.episodes_per_task - 1, max(1, round(self.val_fraction * self.episodes_per_task)))


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
  """One successful attempt found by the planning pass; the writing pass replays it with cameras on."""

  task: str
  attempt: int
  variant_seed: int   # seed of the MT1 benchmark whose task list holds this variant
  variant_index: int  # index into that benchmark's train_tasks
  num_steps: int
  first_success_step: int
  variant: Any = dataclasses.field(repr=False, compare=False)  # the metaworld Task (picklable), for the replay


# ---------------------------------------------------------------------------------------------------------------
# Simulation


@dataclasses.dataclass
class _Rollout:
  num_steps: int
  first_success_step: int | None
  success_at_end: bool
  arrays: dict[str, np.ndarray] | None  # with cameras only: obs, action, reward, image, wrist_image over time


def _rollout(env, policy, variant, options: BuildOptions, cameras: mw.Cameras | None = None) -> _Rollout:
  """Runs the scripted policy until `steps_after_success` steps past its first success, or max_steps."""
  obs = mw.reset_to(env, variant)
  record, first_success, success = [], None, False
  with warnings.catch_warnings():
    # The scripted policies warn on every step whose raw response exceeds [-1, 1]; it is clipped below.
    warnings.filterwarnings("ignore", message="Constant")
    for t in range(min(options.max_steps, env.max_path_length)):
      frames = cameras.render(env.data) if cameras else None
      action = np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)
      next_obs, reward, _, _, info = env.step(action)
      success = bool(info["success"])
      if cameras:
        record.append((obs, action, reward, *frames))
      obs = next_obs
      if success and first_success is None:
        first_success = t
      if first_success is not None and t - first_success >= options.steps_after_success:
        break
  arrays = None
  if cameras:
    columns = list(zip(*record))
    arrays = {"obs": np.asarray(columns[0], np.float32), "action": np.stack(columns[1]),
              "reward": np.asarray(columns[2], np.float32), "image": np.stack(columns[3]),
              "wrist_image": np.stack(columns[4])}
  return _Rollout(t + 1, first_success, success, arrays)


def plan_task(task: str, options: BuildOptions) -> tuple[list[EpisodePlan], dict[str, Any]]:
  """Finds `episodes_per_task` successful variants of `task` (physics only, no rendering)."""
  env, policy = mw.make_env(task), mw.expert_policy(task)
  plans, attempts, lost = [], 0, 0
  max_attempts = options.max_attempts_factor * options.episodes_per_task
  try:
    for variant_seed, index, variant in mw.variants(task, options.seed):
      if len(plans) == options.episodes_per_task or attempts == max_attempts:
        break
      result = _rollout(env, policy, variant, options)
      if result.first_success_step is not None and result.success_at_end:
        plans.append(EpisodePlan(task, attempts, variant_seed, index, result.num_steps, result.first_success_step,
                                 variant))
      elif result.first_success_step is not None:
        lost += 1  # succeeded, then lost it within steps_after_success
      attempts += 1
  finally:
    env.close()
  counts = {"attempted": attempts, "kept": len(plans), "lost_success": lost,
            "mean_steps": round(float(np.mean([p.num_steps for p in plans])), 1) if plans else 0.0}
  return plans, counts


def render_episode(plan: EpisodePlan, options: BuildOptions) -> dict[str, Any]:
  """Replays a planned episode with both cameras on; returns its arrays and the seconds it took.

  Runs in a worker process (see `_worker_pool`): MuJoCo's EGL rendering crashes in a process that has
  imported TensorFlow, which TFDS writing needs.
  """
  start = time.time()
  env, cameras = mw.process_env(plan.task, options.render, plan.variant)
  result = _rollout(env, mw.expert_policy(plan.task), plan.variant, options, cameras)
  if (result.num_steps, result.first_success_step) != (plan.num_steps, plan.first_success_step):
    raise RuntimeError(
        f"{plan.task} variant (seed {plan.variant_seed}, index {plan.variant_index}): the replay ran "
        f"{result.num_steps} steps, first success at {result.first_success_step}; planning saw "
        f"{plan.num_steps} and {plan.first_success_step}. The simulation is not deterministic.")
  return {**result.arrays, "success_at_end": result.success_at_end, "seconds": time.time() - start}


def _worker_pool(num_workers: int):
  # spawn, not fork: the parent has TensorFlow's threads and state, which must not leak into the renderers.
  return concurrent.futures.ProcessPoolExecutor(max_workers=num_workers,
                                                mp_context=multiprocessing.get_context("spawn"))


def _imap_bounded(pool, fn, items: Sequence[Any], window: int, *args) -> Iterator[Any]:
  """pool.map in order, with at most `window` results in flight (frames are large at 224 px)."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item, *args))
    if len(pending) >= window:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


# ---------------------------------------------------------------------------------------------------------------
# TFDS builder


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


DATASET_VERSION = "1.0.0"


@functools.cache
def _builder_class(dataset_name: str):
  """The builder class of one dataset, made on first use so that importing this module skips TensorFlow."""
  tfds = _tfds()

  # Not registered: the names must not shadow, or clash with, TFDS's catalog; readers need only the directory.
  class MetaworldDemos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """RLDS episodes of scripted Meta-World experts."""

    name = dataset_name
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Scripted-expert demonstrations on goal-visible MT1 task variants."}
    # TFDS looks for download checksums next to a builder's code, and for a builder inside a package that
    # lookup imports `importlib_resources`, which TFDS does not install on Python >= 3.9. Nothing is downloaded.
    code_path = None

    def __init__(self, *, options: BuildOptions, plans: dict[str, list[EpisodePlan]], pool, window: int,
                 **kwargs):
      self._options, self._plans, self._pool, self._window = options, plans, pool, window
      self.render_seconds = []
      super().__init__(**kwargs)

    def _info(self):
      s = self._options.image_size
      image = lambda: tfds.features.Image(shape=(s, s, 3), dtype=np.uint8,
                                          encoding_format=self._options.encoding_format)
      return tfds.core.DatasetInfo(
          builder=self,
          description="Meta-World scripted-expert demonstrations (RLDS); see pi0_jax.data.build_metaworld.",
          features=tfds.features.FeaturesDict({
              "steps": tfds.features.Dataset({
                  "observation": tfds.features.FeaturesDict({
                      "image": image(),
                      "wrist_image": image(),
                      "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
                      "env_state": tfds.features.Tensor(shape=(ENV_STATE_DIM,), dtype=np.float32),
                  }),
                  "action": tfds.features.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
                  "reward": tfds.features.Scalar(dtype=np.float32),
                  "discount": tfds.features.Scalar(dtype=np.float32),
                  "is_first": tfds.features.Scalar(dtype=np.bool_),
                  "is_last": tfds.features.Scalar(dtype=np.bool_),
                  "is_terminal": tfds.features.Scalar(dtype=np.bool_),
                  "language_instruction": tfds.features.Text(),
              }),
              "episode_metadata": tfds.features.FeaturesDict({
                  "task": tfds.features.Text(),
                  "variant_seed": tfds.features.Scalar(dtype=np.int64),
                  "variant_index": tfds.features.Scalar(dtype=np.int32),
                  "attempt": tfds.features.Scalar(dtype=np.int32),
                  "success": tfds.features.Scalar(dtype=np.bool_),
                  "first_success_step": tfds.features.Scalar(dtype=np.int32),
                  "num_steps": tfds.features.Scalar(dtype=np.int32),
              }),
          }),
          metadata=tfds.core.MetadataDict(options=dataclasses.asdict(self._options)),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      # TFDS refuses empty splits: a split without episodes is left out.
      return {split: self._generate_examples(split, plans) for split, plans in self._plans.items() if plans}

    def _generate_examples(self, split: str, plans: list[EpisodePlan]):
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      episodes = _imap_bounded(self._pool, render_episode, plans, self._window, self._options)
      bar = tqdm(zip(plans, episodes), total=len(plans), desc=f"{self.name} {split}: episodes", unit="ep")
      for plan, arrays in bar:
        self.render_seconds.append(arrays["seconds"])
        yield f"{plan.task}_{plan.attempt:05d}", _episode(plan, arrays)

  return MetaworldDemos


def _episode(plan: EpisodePlan, arrays: dict[str, Any]) -> dict[str, Any]:
  n = len(arrays["action"])
  steps = [{
      "observation": {
          "image": arrays["image"][t],
          "wrist_image": arrays["wrist_image"][t],
          "state": arrays["obs"][t, :STATE_DIM],
          "env_state": arrays["obs"][t],
      },
      "action": arrays["action"][t],
      "reward": arrays["reward"][t],
      "discount": np.float32(1.0),
      "is_first": t == 0,
      "is_last": t == n - 1,
      "is_terminal": t == n - 1,
      "language_instruction": TASK_INSTRUCTIONS[plan.task],
  } for t in range(n)]
  return {"steps": steps, "episode_metadata": {
      "task": plan.task, "variant_seed": plan.variant_seed, "variant_index": plan.variant_index,
      "attempt": plan.attempt, "success": arrays["success_at_end"],
      "first_success_step": plan.first_success_step, "num_steps": n}}


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def _log(msg: str):
  # stdout, not absl logging: the counts are the console report, also when build() is called as a library.
  print(msg, flush=True)


def _tasks_per_set(split_set: str, tasks: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
  if split_set not in ("train", "test", "both"):
    raise ValueError(f"split_set: expected 'train', 'test' or 'both', got {split_set!r}")
  sets = ["train", "test"] if split_set == "both" else [split_set]
  chosen = {s: SPLIT_SETS[s][1] for s in sets}
  if tasks:
    allowed = {t for s in sets for t in chosen[s]}
    unknown = [t for t in tasks if t not in allowed]
    if unknown:
      raise ValueError(f"tasks {unknown}: not in the ML10 {split_set!r} task set(s); expected some of "
                       f"{sorted(allowed)}")
    chosen = {s: tuple(t for t in chosen[s] if t in tasks) for s in sets}
  return {s: ts for s, ts in chosen.items() if ts}


def build(out_dir: str, split_set: str = "both", episodes_per_task: int = 10, image_size: int = 64,
          tasks: Sequence[str] | None = None, seed: int = 0, *, max_steps: int = 500,
          steps_after_success: int = 5, val_fraction: float = 0.1, max_attempts_factor: int = 4,
          scene_camera: str = "corner", wrist_camera: str = "gripperPOV", encoding_format: str = "jpeg",
          antialias_samples: int = 0, num_workers: int = 1, overwrite: bool = False) -> dict[str, dict[str, Any]]:
  """Builds the ML10 demo datasets under `out_dir`; returns {dataset name: its build report}.

  Each report holds `dir` (pass it to `tfds.builder_from_directory`), the options, per-task counts
  (attempted / kept / train / val / lost_success / mean_steps), totals and timings; it is also saved as
  build_report.json in `dir`. An existing dataset built with the same options and tasks is reused; one built
  otherwise is an error unless `overwrite`. `num_workers` processes simulate and render (at least 1: rendering
  cannot share a process with TensorFlow). They are started with "spawn", so a script calling build() needs
  the usual `if __name__ == "__main__":` guard.
  """
  options = BuildOptions(episodes_per_task=episodes_per_task, image_size=image_size, seed=seed,
                         max_steps=max_steps, steps_after_success=steps_after_success, val_fraction=val_fraction,
                         max_attempts_factor=max_attempts_factor, scene_camera=scene_camera,
                         wrist_camera=wrist_camera, encoding_format=encoding_format,
                         antialias_samples=antialias_samples)
  if num_workers < 1:
    raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
  todo, reports = {}, {}
  for split_set_name, set_tasks in _tasks_per_set(split_set, tasks).items():
    name = SPLIT_SETS[split_set_name][0]
    wanted = {"options": dataclasses.asdict(options), "tasks": list(set_tasks)}
    dataset_dir = os.path.join(out_dir, name, DATASET_VERSION)
    existing = read_build_report(dataset_dir)
    if existing is not None and {k: existing.get(k) for k in wanted} == wanted and not overwrite:
      _log(f"{name}: reusing {dataset_dir} (built with the same options and tasks)")
      reports[name] = existing
    elif os.path.exists(dataset_dir) and not overwrite:
      found = f"options {existing.get('options')}, tasks {existing.get('tasks')}" if existing else "no build report"
      raise FileExistsError(f"{dataset_dir}: exists with {found}; expected {wanted}. Pass overwrite=True "
                            "(--overwrite) to rebuild it.")
    else:
      todo[name] = set_tasks
  if not todo:
    return reports

  try:
    with _worker_pool(num_workers) as pool:
      for name, set_tasks in todo.items():
        reports[name] = _build_one(name, set_tasks, options, out_dir, pool, num_workers)
  except concurrent.futures.process.BrokenProcessPool as e:
    raise RuntimeError(
        f"build_metaworld: a simulation worker died (MUJOCO_GL={os.environ.get('MUJOCO_GL')}). Headless "
        "rendering needs EGL and Mesa: run launch/system_deps.sh, or set MUJOCO_GL=osmesa with libosmesa6.") from e
  return reports


def _build_one(name: str, set_tasks: Sequence[str], options: BuildOptions, out_dir: str, pool,
               num_workers: int) -> dict[str, Any]:
  """Plans, renders and writes one dataset; returns its report."""
  tfds = _tfds()
  dataset_dir = os.path.join(out_dir, name, DATASET_VERSION)
  if os.path.exists(dataset_dir):
    shutil.rmtree(dataset_dir)
  start = time.time()
  splits, counts = {"train": [], "val": []}, {}
  # Planning is physics only, a process per task at a time; the counts come back in task order.
  for task, (plans, task_counts) in zip(set_tasks, pool.map(plan_task, set_tasks, [options] * len(set_tasks))):
    splits["val"] += plans[:options.num_val]
    splits["train"] += plans[options.num_val:]
    counts[task] = {**task_counts, "train": len(plans[options.num_val:]), "val": len(plans[:options.num_val])}
    _log(f"{name}: {task}: kept {task_counts['kept']} of {task_counts['attempted']} attempts "
         f"(mean {task_counts['mean_steps']:.0f} steps)")
    if task_counts["kept"] < options.episodes_per_task:
      _log(f"WARNING {name}: {task}: only {task_counts['kept']} of the {options.episodes_per_task} wanted "
           f"episodes succeeded in {task_counts['attempted']} attempts")
  plan_seconds = time.time() - start
  if not splits["train"]:
    raise RuntimeError(f"{name}: no successful train episode for tasks {list(set_tasks)}; nothing to write")

  builder = _builder_class(name)(options=options, plans=splits, pool=pool, window=2 * num_workers,
                                 data_dir=out_dir, file_format="tfrecord")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  write_seconds = time.time() - start - plan_seconds
  episodes = len(splits["train"]) + len(splits["val"])
  num_steps = sum(p.num_steps for ps in splits.values() for p in ps)
  report = {
      "options": dataclasses.asdict(options), "tasks": list(set_tasks), "dataset": name,
      "dir": str(builder.data_dir), "counts": counts,
      "totals": {"attempted": sum(c["attempted"] for c in counts.values()), "kept": episodes,
                 "train": len(splits["train"]), "val": len(splits["val"]), "steps": num_steps},
      "seconds": {"plan": round(plan_seconds, 2), "render_and_write": round(write_seconds, 2),
                  "render_per_episode": round(sum(builder.render_seconds) / episodes, 3),
                  "render_per_step": round(sum(builder.render_seconds) / num_steps, 4),
                  "num_workers": num_workers},
  }
  files.write_json(os.path.join(builder.data_dir, REPORT_FILE), report, sort_keys=False)
  _log(f"{name}: wrote {report['totals']} to {builder.data_dir} in {plan_seconds + write_seconds:.1f} s "
       f"(planning {plan_seconds:.1f} s; rendering {report['seconds']['render_per_episode']} s per episode)")
  return report


def read_build_report(dataset_dir: str) -> dict[str, Any] | None:
  """The build_report.json of a dataset version directory written by `build`, else None."""
  path = os.path.join(dataset_dir, REPORT_FILE)
  if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")) or not os.path.exists(path):
    return None
  return files.read_json(path, "build report")


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  build(f.out_dir, f.split_set, f.episodes_per_task, f.image_size, f.tasks or None, f.seed,
        max_steps=f.max_steps, steps_after_success=f.steps_after_success, val_fraction=f.val_fraction,
        max_attempts_factor=f.max_attempts_factor, scene_camera=f.scene_camera, wrist_camera=f.wrist_camera,
        encoding_format=f.encoding_format, antialias_samples=f.antialias_samples, num_workers=f.num_workers,
        overwrite=f.overwrite)


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  d = BuildOptions()
  flags.DEFINE_string("out_dir", None, "Directory the datasets are written under (one folder per dataset).",
                      required=True)
  flags.DEFINE_enum("split_set", "both", ["train", "test", "both"],
                    "Which ML10 class set to build: train -> metaworld_ml10_train (10 classes), "
                    "test -> metaworld_ml10_test (5 held-out classes), or both.")
  flags.DEFINE_integer("episodes_per_task", d.episodes_per_task,
                       "Successful episodes kept per task (train + val).")
  flags.DEFINE_integer("image_size", d.image_size, "Square frame size in pixels, both cameras.")
  flags.DEFINE_list("tasks", [], "Subset of the split set's tasks, e.g. reach-v3,push-v3 (default: all).")
  flags.DEFINE_integer("seed", d.seed, "Seed of the task variants (object and goal positions).")
  flags.DEFINE_integer("max_steps", d.max_steps, "Steps before an attempt counts as failed (at most 500).")
  flags.DEFINE_integer("steps_after_success", d.steps_after_success,
                       "Steps recorded after the first success; the episode is kept only if still successful.")
  flags.DEFINE_float("val_fraction", d.val_fraction,
                     "Fraction of each task's episodes in the 'val' split (at least 1 when >= 2 episodes).")
  flags.DEFINE_integer("max_attempts_factor", d.max_attempts_factor,
                       "Give up on a task after this many times episodes_per_task attempts.")
  flags.DEFINE_enum("scene_camera", d.scene_camera, CAMERAS,
                    "Model camera for observation/image (corner* frames are turned right side up).")
  flags.DEFINE_enum("wrist_camera", d.wrist_camera, CAMERAS,
                    "Model camera for observation/wrist_image (gripperPOV and behindGripper ride on the hand).")
  flags.DEFINE_enum("encoding_format", d.encoding_format, ["jpeg", "png"], "Image encoding in the records.")
  flags.DEFINE_integer("antialias_samples", d.antialias_samples,
                       "Multisampling per pixel (0: off, 2.5x cheaper in software GL; Meta-World's model asks 4).")
  flags.DEFINE_integer("num_workers", 1, "Processes that simulate and render (rendering cannot share the "
                       "TensorFlow process); the main process encodes and writes meanwhile.")
  flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that exists with other options.")


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.data.build_metaworld`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
