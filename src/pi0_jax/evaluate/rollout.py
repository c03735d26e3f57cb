"""Closed-loop evaluation in Meta-World: a policy from an export directory drives the simulated robot.

For each task class (the 10 ML10 train classes and the 5 held-out test classes by default) N episodes run on
task variants (object and goal positions) that the demonstrations never showed: they come from
`pi0_jax.envs.metaworld.variants` under an evaluation seed that differs from the seed the demo datasets were built
with (checked by the caller, see pi0_jax.evaluate). Episode i of a task always gets the same variant and the
same sampling noise, whichever worker runs it, so the policy and the mean-action baseline face identical
episodes and a rerun reproduces the numbers.

One episode:
  reset the env on its variant; at every step render the scene and wrist cameras exactly as the demo builder
  did (same cameras, image size, shadows and reflections off, corner cameras turned right side up) and read
  the state the builder stored (obs[:4]: hand xyz + gripper opening);
  every `replan_every` steps ask the policy for a chunk (H actions) and execute its first `replan_every`
  actions (clipped to [-1, 1]), one per step;
  it succeeds when info["success"] is true at some step, and ends there; otherwise after `max_steps` steps.

With a simulated inference delay (RolloutSettings.methods and delays; `run_episode` says what each method does)
the world keeps moving while the policy thinks: a chunk asked for at a chunk boundary becomes usable d steps
later. d = 0 with "sync" or "naive" is exactly the episode above (same actions, same outcome).

MuJoCo's EGL rendering segfaults in a process that has imported TensorFlow (which the offline evaluation and
the trainer use), so episodes run in worker processes started with "spawn", each holding its own policy: no
TensorFlow is imported on this path. Workers reuse their env, cameras and policy across episodes.

Success rates get Wilson score 95% intervals (`wilson_interval`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import time
import zlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pi0_jax import export as export_lib
from pi0_jax.envs import metaworld as mw

POLICY, BASELINE = "policy", "baseline"
KINDS = (POLICY, BASELINE)
METHODS = ("sync", "naive", "rtc", "rtc_trained")  # How a chunk switch handles the inference delay.
# Where the demo builder stores each camera's frames; the dataset spec maps these keys to the model's slots.
SCENE_KEY, WRIST_KEY = "image", "wrist_image"
Z95 = 1.959963984540054  # Two-sided 95% standard normal quantile.


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (95% for the default z); (0, 1) without trials."""
  if trials < 0 or not 0 <= successes <= trials:
    raise ValueError(f"wilson_interval: expected 0 <= successes <= trials, got {successes} of {trials}")
  if trials == 0:
    return 0.0, 1.0
  p = successes / trials
  z2 = z * z
  denominator = 1.0 + z2 / trials
  centre = (p + z2 / (2 * trials)) / denominator
  half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
  # Clamped: at p = 0 or 1 the bound is exactly 0 or 1 up to rounding.
  return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """Everything that decides the closed-loop episodes (also recorded in the report)."""

  export_dir: str
  tasks: tuple[str, ...]
  episodes_per_task: int = 10
  replan_every: int = 5
  max_steps: int = 500
  num_steps: int = 10  # Euler steps of the flow sampler.
  seed: int = 1000  # Seed of the task variants (must differ from the demo data's build seed).
  noise_seed: int = 0  # Seed of the sampling noise.
  render: mw.RenderOptions = mw.RenderOptions()
  gifs: int = 0  # Episodes per task and policy saved as GIFs (the first ones).
  gif_dir: str | None = None
  dataset: str | None = None  # Which dataset's statistics the policy uses (export norm_stats.json).
  platform: str | None = None  # JAX platform of the workers (e.g. "cpu"); None: JAX's default.
  # Simulated inference delay (module docstring): the policy's episodes run once per method and delay.
  methods: tuple[str, ...] = ()
  delays: tuple[int, ...] = ()
  record_actions: bool = False  # Episode records keep every executed action and every chunk received.

  def __post_init__(self):
    object.__setattr__(self, "tasks", tuple(self.tasks))
    object.__setattr__(self, "methods", tuple(self.methods))
    object.__setattr__(self, "delays", tuple(int(d) for d in self.delays))
    bad = [m for m in self.methods if m not in METHODS]
    if bad or bool(self.methods) != bool(self.delays) or any(d < 0 for d in self.delays):
      raise ValueError(f"methods {list(self.methods)} and delays {list(self.delays)}: expected both or neither, "
                       f"methods among {METHODS} and delays >= 0")
    unknown = [t for t in self.tasks if t not in mw.TASK_INSTRUCTIONS]
    if unknown:
      raise ValueError(f"tasks {unknown}: not ML10 task classes; expected some of {sorted(mw.TASK_INSTRUCTIONS)}")
    if not self.tasks:
      raise ValueError("tasks: at least one task class is needed")
    if self.episodes_per_task < 1:
      raise ValueError(f"episodes_per_task: expected >= 1, got {self.episodes_per_task}")
    if self.replan_every < 1:
      raise ValueError(f"replan_every: expected >= 1, got {self.replan_every}")
    mw.check_max_steps(self.max_steps)
    if self.num_steps < 1:
      raise ValueError(f"num_steps: expected >= 1 Euler step, got {self.num_steps}")
    if self.gifs < 0:
      raise ValueError(f"gifs: expected >= 0, got {self.gifs}")
    if self.gifs and not self.gif_dir:
      raise ValueError("gifs > 0 needs gif_dir")


@dataclasses.dataclass(frozen=True)
class EpisodeJob:
  kind: str  # POLICY or BASELINE
  task: str
  episode: int  # Index among the task's evaluation episodes: picks the variant and the noise.
  method: str | None = None  # One of METHODS with a simulated inference delay; None: the plain closed loop.
  delay: int = 0  # d, in control ticks.

  @property
  def label(self) -> str:
    return self.kind if self.method is None else f"{self.method}@{self.delay}"


# ---------------------------------------------------------------------------------------------------------------
# The baseline: export files read without JAX (it needs no model).


class MeanActionPolicy:
  """The mean-action baseline: every chunk repeats the training dataset's mean action.

  That is all zeros in z-score space: what a policy that learned nothing but the action statistics outputs.
  Same `infer` interface as pi0_jax.policy.Policy.
  """

  def __init__(self, export_dir: str, dataset: str | None = None):
    self.dataset, entry = export_lib.norm_stats_entry(export_lib.read_export_json(export_dir, "norm_stats.json"),
                                                      dataset, metadata=export_lib.read_export_metadata(export_dir))
    self.mean_action = np.asarray(entry["norm_stats"]["actions"]["mean"], np.float32)
    model = export_lib.read_export_json(export_dir, "model_config.json")
    self.horizon = int(model["action_horizon"])
    self.action_dim = int(self.mean_action.shape[0])

  def infer(self, observation: Mapping[str, Any], noise=None, num_steps=None) -> dict[str, Any]:
    del noise, num_steps
    batch = np.ndim(observation["state"]) == 2
    chunk = np.tile(self.mean_action, (self.horizon, 1))
    if batch:
      chunk = np.tile(chunk[None], (len(observation["state"]), 1, 1))
    return {"actions": chunk, "infer_ms": 0.0}


# ---------------------------------------------------------------------------------------------------------------
# Worker side: one episode.

# Per worker process: the policies and the variants made so far (the env and cameras: mw.process_env).
_WORKER: dict[str, Any] = {}


def _init_worker(platform: str | None):
  # Runs before anything in the worker imports JAX.
  if platform:
    os.environ["JAX_PLATFORMS"] = platform
  # Several workers may share one accelerator: none may grab most of its memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _policy(kind: str, settings: RolloutSettings):
  key = (kind, settings.export_dir, settings.dataset, settings.num_steps)
  policies = _WORKER.setdefault("policies", {})
  if key not in policies:
    if kind == BASELINE:
      policies[key] = MeanActionPolicy(settings.export_dir, settings.dataset)
    else:
      from pi0_jax.policy import Policy  # pylint: disable=g-import-not-at-top
      policies[key] = Policy.load(settings.export_dir, dataset=settings.dataset, num_steps=settings.num_steps,
                                  seed=settings.noise_seed)
  return policies[key]


def _variant(task: str, seed: int, episode: int):
  """(variant_seed, variant_index, metaworld Task) of evaluation episode `episode` of `task`."""
  cache = _WORKER.setdefault("variants", {})
  made = cache.setdefault((task, seed), [])
  if len(made) <= episode:
    generators = _WORKER.setdefault("variant_generators", {})
    if (task, seed) not in generators:
      generators[(task, seed)] = mw.variants(task, seed)
    generator = generators[(task, seed)]
    while len(made) <= episode:
      made.append(next(generator))
  return made[episode]


def episode_noise_rng(noise_seed: int, task: str, episode: int) -> np.random.Generator:
  # crc32, not hash(): Python's string hash changes per process.
  return np.random.default_rng([noise_seed, zlib.crc32(task.encode()), episode])


def _gif_frame(scene: np.ndarray, wrist: np.ndarray, success: bool) -> np.ndarray:
  """Scene and wrist frames side by side over a bar that turns green once the task is solved."""
  frame = np.concatenate([scene, wrist], axis=1)
  bar = np.zeros((max(2, frame.shape[0] // 16), frame.shape[1], 3), np.uint8)
  bar[...] = (40, 200, 60) if success else (90, 90, 90)
  return np.concatenate([frame, bar], axis=0)


def _observation(frames: Sequence[np.ndarray], obs: np.ndarray, camera_keys: Sequence[str], prompt: str) -> dict:
  """The policy's input at one step, laid out as the demo builder stored the step (images, state, prompt)."""
  images = dict(zip((SCENE_KEY, WRIST_KEY), frames))
  return {"images": {k: images[k] for k in camera_keys}, "state": np.asarray(obs[:mw.STATE_DIM], np.float32),
          "prompt": prompt}


def first_observation(task: str, seed: int, episode: int, render: mw.RenderOptions) -> dict[str, Any]:
  """The first observation of evaluation episode `episode` of `task` under variant seed `seed`, with its variant.

  For checks that rollouts see what the training data shows: under the demo data's build seed, episode i is
  the builder's attempt i. Call it in a process without TensorFlow (e.g. a spawned worker).
  """
  variant_seed, variant_index, variant = _variant(task, seed, episode)
  env, cameras = mw.process_env(task, render, variant)
  obs = mw.reset_to(env, variant)
  out = _observation(cameras.render(env.data), obs, (SCENE_KEY, WRIST_KEY), mw.TASK_INSTRUCTIONS[task])
  return {**out, "variant_seed": int(variant_seed), "variant_index": int(variant_index)}


def _chunk_source(job: EpisodeJob, settings: RolloutSettings):
  """(policy horizon, camera keys, fn(observation, prev_actions or None) -> chunk [H, A]) for one episode."""
  policy = _policy(job.kind, settings)
  noise_rng = episode_noise_rng(settings.noise_seed, job.task, job.episode)
  if job.kind == POLICY:
    noise_shape = (policy.config.action_horizon, policy.config.action_dim)
    camera_keys = tuple(policy.camera_keys)
    unknown = [k for k in camera_keys if k not in (SCENE_KEY, WRIST_KEY)]
    if unknown:
      raise ValueError(f"the policy reads cameras {list(camera_keys)}; a Meta-World rollout renders only "
                       f"{[SCENE_KEY, WRIST_KEY]} (the keys pi0_jax.data.build_metaworld stores)")
  else:
    noise_shape, camera_keys = None, (SCENE_KEY, WRIST_KEY)
  rtc_mode = {"rtc": "guided", "rtc_trained": "trained"}.get(job.method)
  infer_ms = []

  def ask(observation, prev):
    noise = None if noise_shape is None else noise_rng.standard_normal(noise_shape).astype(np.float32)
    kw = {} if prev is None else {"prev_actions": prev, "inference_delay": job.delay, "rtc_mode": rtc_mode}
    out = policy.infer(observation, noise=noise, num_steps=settings.num_steps, **kw)
    chunk = np.asarray(out["actions"], np.float32)
    if chunk.ndim != 2 or chunk.shape[1] != mw.ACTION_DIM:
      raise ValueError(f"{job.kind} returned actions of shape {chunk.shape}; expected [horizon, "
                       f"{mw.ACTION_DIM}] (Meta-World's action space)")
    infer_ms.append(float(out.get("infer_ms", 0.0)))
    return chunk

  horizon = policy.config.action_horizon if job.kind == POLICY else policy.horizon
  return horizon, camera_keys, ask, infer_ms


def hold_action(last: np.ndarray) -> np.ndarray:
  """What the robot does while it waits for a chunk (sync): zero xyz delta, the last gripper command kept."""
  action = np.zeros(mw.ACTION_DIM, np.float32)
  action[3] = last[3]
  return action


class _Schedule:
  """Which action one episode executes at each step, with the policy asked at chunk boundaries (run_episode).

  realtime.ChunkTimeline keeps the chunk/tick alignment; this adds the chunk in flight for d steps and what the
  robot does meanwhile. `chunks` lists every chunk that took over ({tick, launch_tick, chunk}), `jumps` the
  switch jump of each but the first.
  """

  def __init__(self, horizon: int, s: int, d: int, method: str | None, ask):
    from pi0_jax.realtime import ChunkTimeline  # pylint: disable=g-import-not-at-top
    self.timeline, self.s, self.d, self.ask = ChunkTimeline(horizon), s, d, ask
    self.sync, self.rtc = method == "sync", method in ("rtc", "rtc_trained")
    self.pending: dict[str, Any] | None = None
    self.last = np.zeros(mw.ACTION_DIM, np.float32)
    self.chunks: list[dict[str, Any]] = []
    self.jumps: list[float] = []

  def _switch_if_ready(self, t: int) -> None:
    if self.pending is None or t - self.pending["tick"] < self.d:
      return
    timeline, a_old = self.timeline, np.clip(self.timeline.peek(), -1.0, 1.0)
    timeline.switch(self.pending["chunk"], timeline.ticks if self.sync else self.pending["launch_tick"])
    self.jumps.append(float(np.linalg.norm(np.clip(timeline.peek(), -1.0, 1.0) - a_old)))
    self.chunks.append(self.pending)
    self.pending = None

  def action(self, t: int, observation: dict) -> np.ndarray:
    """The action of step t (clipped to [-1, 1]), asking the policy with `observation` when a chunk is due."""
    timeline = self.timeline
    if timeline.chunk is None:  # the first chunk, synchronously: the episode starts once it is there
      timeline.start(self.ask(observation, None))
      self.chunks.append({"tick": t, "launch_tick": t, "chunk": timeline.chunk})
    self._switch_if_ready(t)  # the chunk asked for d steps ago takes over ...
    if self.pending is None and timeline.index >= self.s:  # ... before the next is asked for (at once when d = s)
      prev = timeline.remaining() if self.rtc else None
      self.pending = {"tick": t, "launch_tick": timeline.ticks, "chunk": self.ask(observation, prev)}
      self._switch_if_ready(t)  # d = 0
    if self.pending is not None and self.sync:
      self.last = hold_action(self.last)
    else:
      self.last = np.clip(timeline.advance(), -1.0, 1.0)
    return self.last


def run_episode(job: EpisodeJob, settings: RolloutSettings) -> dict[str, Any]:
  """Runs one episode (see the module docstring); returns its record. Call in a process without TensorFlow.

  With a method and delay d (simulated inference delay): at a chunk boundary (s = min(replan_every, H) actions of
  the current chunk executed) the policy is asked with that step's observation, and its chunk is usable d steps
  later. Meanwhile "sync" holds still (`hold_action`) and then runs the new chunk from step 0; "naive" keeps
  executing the old chunk and switches to the new one at step d; "rtc" and "rtc_trained" do the same with the new
  chunk sampled by guided / training-time real-time chunking from the old chunk's plan still to come (old step
  s + i is new step i). The first chunk is asked for synchronously: the episode starts once it is there. The
  switch jump is |a_new - a_old|_2 over action dims (robot units, as executed after clipping) at the step the new
  chunk takes over: a_new is what is executed, a_old what the old chunk would have executed then (its next step:
  old[s + d] for naive / rtc, old[s] for sync; past its end its last step).
  """
  start = time.time()
  variant_seed, variant_index, variant = _variant(job.task, settings.seed, job.episode)
  env, cameras = mw.process_env(job.task, settings.render, variant)
  horizon, camera_keys, ask, infer_ms = _chunk_source(job, settings)
  schedule = _Schedule(horizon, min(settings.replan_every, horizon), job.delay, job.method, ask)
  record_gif = job.episode < settings.gifs
  instruction = mw.TASK_INSTRUCTIONS[job.task]

  obs = mw.reset_to(env, variant)
  success, first_success, total_reward, gif, executed = False, None, 0.0, [], []
  steps = min(settings.max_steps, env.max_path_length)
  for t in range(steps):
    scene, wrist = cameras.render(env.data)
    action = schedule.action(t, _observation((scene, wrist), obs, camera_keys, instruction))
    executed.append(action)
    obs, reward, _, _, info = env.step(action)
    total_reward += float(reward)
    if record_gif:
      gif.append(_gif_frame(scene, wrist, bool(info["success"])))
    if info["success"]:
      success, first_success = True, t
      break
  num_steps = t + 1
  gif_path = None
  if record_gif:
    scene, wrist = cameras.render(env.data)
    gif.append(_gif_frame(scene, wrist, success))
    gif_path = os.path.join(settings.gif_dir, f"{job.label}_{job.task}_ep{job.episode:03d}.gif")
    write_gif(gif_path, gif)
  record = {
      "kind": job.kind, "task": job.task, "episode": job.episode, "variant_seed": int(variant_seed),
      "variant_index": int(variant_index), "success": success, "first_success_step": first_success,
      "steps": num_steps, "return": total_reward, "replans": len(infer_ms),
      "infer_ms_mean": float(np.mean(infer_ms)) if infer_ms else 0.0,
      # The first call compiles the sampler: the median is the steady-state cost.
      "infer_ms_median": float(np.median(infer_ms)) if infer_ms else 0.0,
      "seconds": time.time() - start, "gif": gif_path,
  }
  if job.method is not None:
    record.update(method=job.method, delay=job.delay, switch_jumps=schedule.jumps)
  if settings.record_actions:
    record.update(actions=np.stack(executed).tolist(), chunks=[
        {"tick": c["tick"], "launch_tick": c["launch_tick"], "chunk": np.asarray(c["chunk"]).tolist()}
        for c in schedule.chunks])
  return record


def write_gif(path: str, frames: Sequence[np.ndarray], fps: int = 20):
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  from pi0_jax import files  # pylint: disable=g-import-not-at-top
  files.makedirs(os.path.dirname(files.absolute(path)))
  # The pillow plugin takes the frame duration in milliseconds; loop=0 repeats forever. Encoded in memory, then
  # written through pi0_jax.files: the GIF directory may be a bucket.
  data = iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=int(1000 / fps), loop=0)
  files.write_bytes(path, data)


# ---------------------------------------------------------------------------------------------------------------
# Driver side.


def episode_jobs(settings: RolloutSettings, kinds: Sequence[str]) -> list[EpisodeJob]:
  """Every episode to run, grouped by task so that a worker keeps its env across consecutive jobs.

  With settings.delays, the policy's episodes run once per method and delay (same variants and noise seeds).
  """
  bad = [k for k in kinds if k not in KINDS]
  if bad or not kinds:
    raise ValueError(f"kinds {list(kinds)}: expected some of {KINDS}")
  jobs = []
  for kind in kinds:
    variants = ([(m, d) for m in settings.methods for d in settings.delays] if kind == POLICY and settings.delays
                else [(None, 0)])
    jobs += [EpisodeJob(kind, task, i, method, d) for method, d in variants for task in settings.tasks
             for i in range(settings.episodes_per_task)]
  return jobs


def check_delays(settings: RolloutSettings) -> None:
  """Checks the delay sweep against the export's model (no JAX): d <= s <= H - d for every delay, with
  s = min(replan_every, H), and rtc_max_delay >= d for rtc_trained. Raises before any rollout starts."""
  if not settings.delays:
    return
  path = os.path.join(settings.export_dir, "model_config.json")
  model = export_lib.read_export_json(settings.export_dir, "model_config.json")
  horizon, max_delay = int(model["action_horizon"]), int(model.get("rtc_max_delay", 0))
  s = min(settings.replan_every, horizon)
  bad = [d for d in settings.delays if not d <= s <= horizon - d]
  if bad:
    raise ValueError(f"delays {bad}: a simulated inference delay d needs d <= s <= H - d, with s = "
                     f"min(replan_every, H) = {s} and H = action_horizon = {horizon} ({path})")
  if "rtc_trained" in settings.methods and max(settings.delays) > max_delay:
    raise ValueError(f"method rtc_trained: {path} has rtc_max_delay = {max_delay}, but the delays go up to "
                     f"{max(settings.delays)}; it needs a model trained with rtc_max_delay >= "
                     f"{max(settings.delays)} (configs: model.rtc_max_delay)")


def run_closed_loop(settings: RolloutSettings, kinds: Sequence[str] = (POLICY,), *, num_workers: int = 1,
                    progress: bool = True) -> list[dict[str, Any]]:
  """Runs every episode of `settings` for each kind (POLICY, BASELINE) in spawned workers; returns the records.

  Records come back in job order (kind, task, episode). Workers are started with "spawn", so a script calling
  this needs the usual `if __name__ == "__main__":` guard.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if num_workers < 1:
    raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
  jobs = episode_jobs(settings, kinds)
  check_delays(settings)
  if settings.gifs:
    from pi0_jax import files  # pylint: disable=g-import-not-at-top
    files.makedirs(settings.gif_dir)
  results: list[dict[str, Any] | None] = [None] * len(jobs)
  bar = tqdm(total=len(jobs), desc="closed loop", unit="ep", disable=not progress, dynamic_ncols=True)
  successes = {j.label: [0, 0] for j in jobs}
  try:
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(num_workers, len(jobs)),
                                                mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(settings.platform,)) as pool:
      futures = {pool.submit(run_episode, job, settings): i for i, job in enumerate(jobs)}
      for future in concurrent.futures.as_completed(futures):
        i = futures[future]
        try:
          record = future.result()
        except concurrent.futures.process.BrokenProcessPool:
          raise
        except Exception as e:
          for other in futures:
            other.cancel()
          job = jobs[i]
          raise RuntimeError(f"closed loop: {job.label} episode {job.episode} of {job.task} failed: "
                             f"{type(e).__name__}: {e}") from e
        results[i] = record
        successes[jobs[i].label][0] += record["success"]
        successes[jobs[i].label][1] += 1
        bar.set_postfix({k: f"{s}/{n}" for k, (s, n) in successes.items()}, refresh=False)
        bar.update(1)
  except concurrent.futures.process.BrokenProcessPool as e:
    raise RuntimeError(
        f"closed loop: a simulation worker died (MUJOCO_GL={os.environ.get('MUJOCO_GL')}). Headless rendering "
        "needs EGL and Mesa (launch/system_deps.sh), or MUJOCO_GL=osmesa with libosmesa6; a worker that ran out "
        "of memory dies the same way (use fewer --num_workers).") from e
  finally:
    bar.close()
  return results  # type: ignore[return-value]


def summarize(records: Iterable[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
  """Per kind: per-task success (rate, Wilson 95% CI, steps) and train-class vs held-out-class averages.

  A group's `mean_success` is the mean of its tasks' rates (each task weighs the same); its `ci95` is the Wilson
  interval of all its episodes pooled.
  """
  by_kind: dict[str, dict[str, list]] = {}
  for r in records:
    if r.get("method") is not None:
      continue  # Episodes with a simulated inference delay: summarize_delays.
    by_kind.setdefault(r["kind"], {}).setdefault(r["task"], []).append(r)
  out = {}
  for kind, per_task in by_kind.items():
    task_rows = {}
    for task in tasks:
      episodes = per_task.get(task, [])
      if not episodes:
        continue
      n, k = len(episodes), sum(bool(e["success"]) for e in episodes)
      first = [e["first_success_step"] for e in episodes if e["success"]]
      task_rows[task] = {
          "split": "train" if task in mw.ML10_TRAIN_TASKS else "heldout",
          "episodes": n, "successes": k, "success_rate": k / n, "ci95": list(wilson_interval(k, n)),
          "mean_steps": float(np.mean([e["steps"] for e in episodes])),
          "mean_first_success_step": float(np.mean(first)) if first else None,
          "mean_return": float(np.mean([e["return"] for e in episodes])),
          "infer_ms_median": float(np.median([e["infer_ms_median"] for e in episodes])),
      }
    groups = {}
    for group in ("train", "heldout", "all"):
      rows = [row for row in task_rows.values() if group in ("all", row["split"])]
      if not rows:
        continue
      n, k = sum(r["episodes"] for r in rows), sum(r["successes"] for r in rows)
      groups[group] = {"tasks": len(rows), "episodes": n, "successes": k,
                       "mean_success": float(np.mean([r["success_rate"] for r in rows])),
                       "pooled_success": k / n, "ci95": list(wilson_interval(k, n))}
    out[kind] = {"tasks": task_rows, "groups": groups}
  return out


def summarize_delays(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """{method: {delay: row}} over the episodes with a simulated inference delay, all tasks pooled.

  A row: episodes, successes, success_rate with its Wilson 95% interval, mean_steps_to_success (over the
  successful episodes; None without any), and the switch jump |a_new - a_old|_2 (run_episode) as its mean and
  max over every chunk switch of every episode (None without switches).
  """
  groups: dict[str, dict[int, list]] = {}
  for r in records:
    if r.get("method") is not None:
      groups.setdefault(r["method"], {}).setdefault(int(r["delay"]), []).append(r)
  out: dict[str, dict[str, Any]] = {}
  for method in [m for m in METHODS if m in groups]:
    out[method] = {}
    for d in sorted(groups[method]):
      episodes = groups[method][d]
      n, k = len(episodes), sum(bool(e["success"]) for e in episodes)
      steps = [e["steps"] for e in episodes if e["success"]]
      jumps = [j for e in episodes for j in e["switch_jumps"]]
      out[method][str(d)] = {
          "delay": d, "episodes": n, "successes": k, "success_rate": k / n, "ci95": list(wilson_interval(k, n)),
          "mean_steps_to_success": float(np.mean(steps)) if steps else None, "switches": len(jumps),
          "switch_jump_mean": float(np.mean(jumps)) if jumps else None,
          "switch_jump_max": float(np.max(jumps)) if jumps else None,
      }
  return out


__all__ = ["BASELINE", "KINDS", "METHODS", "MeanActionPolicy", "POLICY", "RolloutSettings", "EpisodeJob",
           "check_delays", "episode_jobs", "first_observation", "hold_action", "run_closed_loop", "run_episode",
           "summarize", "summarize_delays", "wilson_interval", "write_gif"]
