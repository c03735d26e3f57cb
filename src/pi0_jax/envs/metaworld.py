"""Meta-World, as the demo builder and the closed-loop evaluator both use it: one place for both.

  tasks          ML10_TRAIN_TASKS (10 classes), ML10_TEST_TASKS (5 held-out classes), TASK_INSTRUCTIONS
  variants       `variants(task, seed)`: the endless, seeded stream of a task's object and goal placements
                 (MT1 benchmarks of 50 each), goal visible in the observation or, with goal_visible=False,
                 zeroed as in Meta-World's ML benchmarks
  environments   `make_env(task)`; `reset_to(env, variant)` starts an episode on a variant
  experts        `expert_policy(task)`: Meta-World's scripted policy (it needs the goal in the observation)
  cameras        `Cameras`: square offscreen frames, right side up, with the settings of `RenderOptions`
  per process    `process_env(task, render, variant)`: one env with its cameras, kept while the task stays

The robot state a policy sees is obs[:STATE_DIM] (hand xyz, gripper opening); actions are ACTION_DIM floats in
[-1, 1]. MuJoCo's EGL rendering segfaults in a process that has imported TensorFlow (seen with tensorflow-cpu
2.21 and Mesa's llvmpipe): render in processes that never import it. Importing this module imports neither
MuJoCo nor Meta-World; they load on first use.
"""

from __future__ import annotations

import os

# mujoco picks its GL backend from this variable when a renderer is first made; EGL needs no display.
os.environ.setdefault("MUJOCO_GL", "egl")
# Software GL (Mesa llvmpipe) on one thread per process: measured 2x faster per frame than its default of one
# thread per core on a 2-core machine, and workers scale across cores instead.
os.environ.setdefault("LP_NUM_THREADS", "1")

import dataclasses
import itertools
import multiprocessing.util
import pickle
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["ACTION_DIM", "CAMERAS", "Cameras", "ENV_STATE_DIM", "ML10_TEST_TASKS", "ML10_TRAIN_TASKS",
           "MAX_EPISODE_STEPS", "RenderOptions", "STATE_DIM", "TASK_INSTRUCTIONS", "check_max_steps",
           "close_process_env", "expert_policy", "make_env", "process_env", "reset_to", "variants"]

ML10_TRAIN_TASKS = (
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3", "button-press-topdown-v3",
    "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3")
ML10_TEST_TASKS = ("drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3")

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
STATE_DIM = 4  # obs[:4]: hand xyz + gripper opening.
ENV_STATE_DIM = 39  # The full observation; its last 3 entries are the goal (zero when hidden).
ACTION_DIM = 4
MAX_EPISODE_STEPS = 500  # Meta-World's episode limit (env.max_path_length).


# ---------------------------------------------------------------------------------------------------------------
# Variants, environments, experts


def variants(task: str, seed: int, *, goal_visible: bool = True) -> Iterator[tuple[int, int, Any]]:
  """(variant_seed, index, metaworld Task) of `task`, endless and seeded: MT1 benchmarks of 50 goals each.

  A goal-visible MT1 benchmark draws its 50 object/goal placements from its seed; each block of 50 gets a
  seed of its own, mixed from `seed`, the task name and the block number. goal_visible=False gives the same
  placements with the goal zeroed in the observation (Meta-World's ML setting; the scripted experts then fail).
  """
  import metaworld  # pylint: disable=g-import-not-at-top
  _check_task(task)
  for block in itertools.count():
    # crc32 rather than hash(): Python's string hash changes per process.
    variant_seed = int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), block]).generate_state(1)[0])
    for index, variant in enumerate(metaworld.MT1(task, seed=variant_seed).train_tasks):
      yield variant_seed, index, variant if goal_visible else _hide_goal(variant)


def _hide_goal(variant):
  """The same Meta-World Task with the goal left out of the observation (what env.set_task reads)."""
  data = pickle.loads(variant.data)
  data["partially_observable"] = True
  return variant._replace(data=pickle.dumps(data))


def check_max_steps(max_steps: int) -> None:
  if not 1 <= max_steps <= MAX_EPISODE_STEPS:
    raise ValueError(f"max_steps: expected 1..{MAX_EPISODE_STEPS} (Meta-World's episode limit), got {max_steps}")


def _check_task(task: str):
  import metaworld  # pylint: disable=g-import-not-at-top
  if task not in metaworld.env_dict.ALL_V3_ENVIRONMENTS:
    raise ValueError(f"task {task!r}: not a Meta-World v3 environment (metaworld.env_dict.ALL_V3_ENVIRONMENTS)")


def make_env(task: str):
  """A fresh Meta-World env of `task`; start each episode with `reset_to(env, variant)`."""
  import metaworld  # pylint: disable=g-import-not-at-top
  _check_task(task)
  return metaworld.env_dict.ALL_V3_ENVIRONMENTS[task]()


def reset_to(env, variant) -> np.ndarray:
  """Sets `env` to a variant and resets it; returns the first observation [ENV_STATE_DIM].

  Any variant, goal visible or hidden, after any other: Meta-World 3.1's set_task deletes the env's cached
  observation space when the visibility changes, and fails when it was never computed, so it is computed first.
  """
  env.sawyer_observation_space  # pylint: disable=pointless-statement
  env.set_task(variant)
  obs, _ = env.reset()
  return obs


def expert_policy(task: str):
  """Meta-World's scripted expert of `task`: get_action(obs) -> action (needs the goal in obs: goal_visible)."""
  from metaworld import policies  # pylint: disable=g-import-not-at-top
  _check_task(task)
  if task not in policies.ENV_POLICY_MAP:
    raise ValueError(f"task {task!r}: no scripted policy in metaworld.policies.ENV_POLICY_MAP")
  return policies.ENV_POLICY_MAP[task]()


# ---------------------------------------------------------------------------------------------------------------
# Cameras


@dataclasses.dataclass(frozen=True)
class RenderOptions:
  """Camera settings of a dataset's frames (build_metaworld.BuildOptions fields); rollouts must match them."""

  image_size: int = 64
  scene_camera: str = "corner"
  wrist_camera: str = "gripperPOV"
  antialias_samples: int = 0

  def __post_init__(self):
    if not 8 <= self.image_size <= 1024:
      raise ValueError(f"image_size: expected 8..1024 pixels, got {self.image_size}")
    if not 0 <= self.antialias_samples <= 16:
      raise ValueError(f"antialias_samples: expected 0..16, got {self.antialias_samples}")
    for key in ("scene_camera", "wrist_camera"):
      if getattr(self, key) not in CAMERAS:
        raise ValueError(f"{key}: expected one of {CAMERAS}, got {getattr(self, key)!r}")

  @classmethod
  def from_build_options(cls, options: Mapping[str, Any]) -> "RenderOptions":
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in options]
    if missing:
      raise ValueError(f"build options {dict(options)}: missing {missing}; expected a build_report.json written "
                       "by pi0_jax.data.build_metaworld.")
    return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls)})


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


# ---------------------------------------------------------------------------------------------------------------
# One env and its cameras per worker process

# One at a time: each holds ~160 MB (software GL context and textures).
_PROCESS_ENV: dict[str, Any] = {}


def close_process_env():
  """Frees this process's env and renderer (before switching tasks, or at exit: EGL may be gone at teardown)."""
  if "cameras" in _PROCESS_ENV:
    _PROCESS_ENV["cameras"].close()
    _PROCESS_ENV["env"].close()
  _PROCESS_ENV.clear()


# Pool workers leave through multiprocessing's exit path, which runs these finalizers but not atexit hooks.
multiprocessing.util.Finalize(None, close_process_env, exitpriority=10)


def process_env(task: str, render: RenderOptions, variant) -> tuple[Any, Cameras]:
  """(env, cameras [scene, wrist]) of this process for `task`, made on first use and kept across episodes.

  A new task or new camera settings replace them. `variant` sets up a new env (the cameras' orientation test
  runs a forward pass, which needs a reset env); each episode still starts with `reset_to` itself.
  """
  if _PROCESS_ENV.get("key") != (task, render):
    close_process_env()
    env = make_env(task)
    reset_to(env, variant)
    cameras = Cameras(env.model, env.data, (render.scene_camera, render.wrist_camera), render.image_size,
                      render.antialias_samples)
    _PROCESS_ENV.update(key=(task, render), env=env, cameras=cameras)
  return _PROCESS_ENV["env"], _PROCESS_ENV["cameras"]
