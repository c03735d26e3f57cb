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

import os

# mujoco picks its GL backend from this variable when a renderer is first made; EGL needs no display.
os.environ.setdefault("MUJOCO_GL", "egl")
# Software GL (Mesa llvmpipe) on one thread per process: measured 2x faster per frame than its default of one
# thread per core on a 2-core machine, and workers scale across cores instead.
os.environ.setdefault("LP_NUM_THREADS", "1")

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import json
import multiprocessing
import multiprocessing.util
import shutil
import time
import warnings
import zlib
from typing import Any, Iterator, Sequence

import numpy as np

ML10_TRAIN_TASKS = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3", "button-press-topdown-v3",
    "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3")
ML10_TEST_TASKS = ("drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3")

# Split set -> (dataset name, its task classes). Names stay clear of TFDS catalog entries, which would
# send TFDS to the network.
SPLIT_SETS = {
    "train": ("metaworld_ml10_train", ML10_TRAIN_TASKS),
    "test": ("metaworld_ml10_test", ML10_TEST_TASKS),
}

TASK_INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "sweep-v3": "sweep the puck off the table",
    "basketball-v3": "put the ball into the basket",
    "drawer-open-v3": "open the drawer",
    "door-close-v3": "close the door",
    "shelf-place-v3": "pick up the puck and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "lever-pull-v3": "pull the lever up",
}

# Cameras of Meta-World's shared scene (metaworld/assets/objects/assets/xyz_base.xml).
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
REPORT_FILE = "build_report.json"
STATE_DIM = 4
ENV_STATE_DIM = 39
ACTION_DIM = 4


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
    if not 8 <= self.image_size <= 1024:
      raise ValueError(f"image_size: expected 8..1024 pixels, got {self.image_size}")
    if not 1 <= self.max_steps <= 500:
      raise ValueError(f"max_steps: expected 1..500 (Meta-World's episode limit), got {self.max_steps}")
    if self.steps_after_success < 0:
      raise ValueError(f"steps_after_success: expected >= 0, got {self.steps_after_success}")
    if not 0.0 <= self.val_fraction < 1.0:
      raise ValueError(f"val_fraction: expected in [0, 1), got {self.val_fraction}")
    if self.max_attempts_factor < 1:
      raise ValueError(f"max_attempts_factor: expected >= 1, got {self.max_attempts_factor}")
    if not 0 <= self.antialias_samples <= 16:
      raise ValueError(f"antialias_samples: expected 0..16, got {self.antialias_samples}")
    for key in ("scene_camera", "wrist_camera"):
      if getattr(self, key) not in CAMERAS:
        raise ValueError(f"{key}: expected one of {CAMERAS}, got {getattr(self, key)!r}")
    if self.encoding_format not in ("jpeg", "png"):
      raise ValueError(f"encoding_format: expected 'jpeg' or 'png', got {self.encoding_format!r}")

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


def _variants(task: str, seed: int) -> Iterator[tuple[int, int, Any]]:
  """(variant_seed, index, metaworld Task) of `task`, endless and seeded: MT1 benchmarks of 50 goals each.

  A goal-visible MT1 benchmark draws its 50 object/goal placements from its seed; each block of 50 gets a
  seed of its own, mixed from `seed`, the task name and the block number.
  """
  import metaworld  # pylint: disable=g-import-not-at-top
  for block in itertools.count():
    # crc32 rather than hash(): Python's string hash changes per process.
    variant_seed = int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), block]).generate_state(1)[0])
    for index, variant in enumerate(metaworld.MT1(task, seed=variant_seed).train_tasks):
      yield variant_seed, index, variant


def _make_env_and_policy(task: str):
  import metaworld  # pylint: disable=g-import-not-at-top
  from metaworld import policies  # pylint: disable=g-import-not-at-top
  if task not in metaworld.env_dict.ALL_V3_ENVIRONMENTS:
    raise ValueError(f"task {task!r}: not a Meta-World v3 environment (metaworld.env_dict.ALL_V3_ENVIRONMENTS)")
  if task not in policies.ENV_POLICY_MAP:
    raise ValueError(f"task {task!r}: no scripted policy in metaworld.policies.ENV_POLICY_MAP")
  return metaworld.env_dict.ALL_V3_ENVIRONMENTS[task](), policies.ENV_POLICY_MAP[task]()


class Cameras:
  """Offscreen square frames of named model cameras, right side up, rendered cheaply.

  Shadows and reflections are off (about 5x cheaper per frame) and so, unless `antialias_samples` > 0, is
  multisampling (2.5x cheaper again in software GL). Use the same settings wherever a policy trained on these
  frames is evaluated. Not in a process that has imported TensorFlow: EGL rendering crashes there.
  """

  def __init__(self, model, data, names: Sequence[str], size: int, antialias_samples: int = 0):
    import mujoco  # pylint: disable=g-import-not-at-top
    available = [model.camera(i).name for i in range(model.ncam)]
    for name in names:
      if name not in available:
        raise ValueError(f"camera {name!r}: not in the Meta-World model; available: {available}")
    # The offscreen buffer must hold the frame; Meta-World's model asks for 640x480.
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, size)
    model.vis.quality.offsamples = antialias_samples
    self._renderer = mujoco.Renderer(model, size, size)
    self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    mujoco.mj_forward(model, data)
    # A camera whose up axis points down in the world (Meta-World's corner cameras) is rolled by 180 degrees:
    # rotating the frame by 180 degrees (not a mirror flip) puts it right side up.
    self._rotate = {name: data.cam_xmat[model.camera(name).id][7] < 0 for name in names}
    self._names = tuple(names)

  def render(self, data) -> list[np.ndarray]:
    frames = []
    for name in self._names:
      self._renderer.update_scene(data, camera=name)
      frame = self._renderer.render()
      frames.append(np.ascontiguousarray(frame[::-1, ::-1]) if self._rotate[name] else frame.copy())
    return frames

  def close(self):
    # Freed here, not at interpreter exit, where EGL may already be torn down.
    self._renderer.close()


@dataclasses.dataclass
class _Rollout:
  num_steps: int
  first_success_step: int | None
  success_at_end: bool
  arrays: dict[str, np.ndarray] | None  # with cameras only: obs, action, reward, image, wrist_image over time


def _rollout(env, policy, variant, options: BuildOptions, cameras: Cameras | None = None) -> _Rollout:
  """Runs the scripted policy until `steps_after_success` steps past its first success, or max_steps."""
  env.set_task(variant)
  obs, _ = env.reset()
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
  env, policy = _make_env_and_policy(task)
  plans, attempts, lost = [], 0, 0
  max_attempts = options.max_attempts_factor * options.episodes_per_task
  try:
    for variant_seed, index, variant in _variants(task, options.seed):
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


# In a worker process: the current (task, options) and its env, policy and cameras, reused across its episodes.
# One at a time: each holds ~160 MB (software GL context and textures).
_WORKER_STATE: dict[str, Any] = {}


def _close_worker_state():
  # Freed before switching tasks or exiting: at interpreter teardown EGL may already be gone.
  if "cameras" in _WORKER_STATE:
    _WORKER_STATE["cameras"].close()
    _WORKER_STATE["env"].close()
  _WORKER_STATE.clear()


# Pool workers leave through multiprocessing's exit path, which runs these finalizers but not atexit hooks.
multiprocessing.util.Finalize(None, _close_worker_state, exitpriority=10)


def render_episode(plan: EpisodePlan, options: BuildOptions) -> dict[str, Any]:
  """Replays a planned episode with both cameras on; returns its arrays and the seconds it took.

  Runs in a worker process (see `_worker_pool`): MuJoCo's EGL rendering crashes in a process that has
  imported TensorFlow, which TFDS writing needs.
  """
  start = time.time()
  if _WORKER_STATE.get("key") != (plan.task, options):
    _close_worker_state()
    env, policy = _make_env_and_policy(plan.task)
    env.set_task(plan.variant)
    env.reset()
    cameras = Cameras(env.model, env.data, (options.scene_camera, options.wrist_camera), options.image_size,
                      options.antialias_samples)
    _WORKER_STATE.update(key=(plan.task, options), env=env, policy=policy, cameras=cameras)
  env, policy, cameras = _WORKER_STATE["env"], _WORKER_STATE["policy"], _WORKER_STATE["cameras"]
  result = _rollout(env, policy, plan.variant, options, cameras)
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
    existing = _read_report(dataset_dir)
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
  with open(os.path.join(builder.data_dir, REPORT_FILE), "w") as f:
    json.dump(report, f, indent=2)
  _log(f"{name}: wrote {report['totals']} to {builder.data_dir} in {plan_seconds + write_seconds:.1f} s "
       f"(planning {plan_seconds:.1f} s; rendering {report['seconds']['render_per_episode']} s per episode)")
  return report


def _read_report(dataset_dir: str) -> dict[str, Any] | None:
  path = os.path.join(dataset_dir, REPORT_FILE)
  if not os.path.exists(os.path.join(dataset_dir, "dataset_info.json")) or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


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
