"""Real-time chunked execution: a fixed-rate control loop that never waits for inference.

A chunk's step i is meant for the control tick i ticks after the observation it was sampled from. While the robot
executes the current chunk, the next one is sampled in a background thread from the newest observation; the
actions executed meanwhile can no longer change, so the policy is told how many there will be (the inference
delay d) and what they are (the plan still to come), and continues them (real-time chunking, arXiv 2506.07339;
`Pi0.sample_actions(prev_actions=...)`).

One tick of `RealtimeExecutor.step(obs)`, at control tick k:
  1. if the inference launched at tick k0 has finished, its chunk replaces the current one at index k - k0 (the
     steps for ticks k0 .. k - 1 were executed from the old chunk); its latency joins the recent latencies;
  2. if no inference is running and at least max(s, d) actions of the current chunk were executed (s the execution
     horizon), launch one: infer(obs, prev_actions = current chunk from the next index on ([n, A], n <= H, not
     padded), inference_delay = d = ceil(latency / tick) for the largest recent latency, at least 1 and at most n);
  3. return the current chunk's next action (past its end: its last action again, counted in `underruns`).
A result can be used from the tick after its launch on, so at least one action (that of the launch tick) is always
executed from the old chunk: d >= 1. Latencies within 1e-6 ticks of a whole number of ticks count as that number.

    executor = RealtimeExecutor(infer, action_horizon=H, execution_horizon=s, tick=1 / 50)
    executor.start(first_obs)                          # first chunk, synchronously; warms the RTC path up
    executor.run(num_ticks, get_obs, send_action)      # or call executor.step(obs) from your own loop

with e.g. infer = lambda obs, prev, d: policy.infer(obs, prev_actions=prev, inference_delay=d)["actions"].
`SimulatedClock` replaces wall time to replay the scheme with chosen latencies (tests, simulated robots).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import threading
import time
from typing import Any, Callable, Protocol

import numpy as np

__all__ = ["ChunkTimeline", "Clock", "RealtimeExecutor", "SimulatedClock", "SystemClock"]

InferFn = Callable[[Any, "np.ndarray | None", int], Any]


class Clock(Protocol):
  """Time as the executor sees it."""

  def now(self) -> float:
    """Seconds on a monotonic scale."""

  def sleep_until(self, deadline: float) -> None:
    """Returns at `deadline` (at once if it passed)."""

  def settle(self, done: threading.Event) -> bool:
    """Whether a background job has finished by now (`done` set). Never waits for real time."""


class SystemClock:
  """Wall time (time.monotonic)."""

  def now(self) -> float:
    return time.monotonic()

  def sleep_until(self, deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))

  def settle(self, done: threading.Event) -> bool:
    return done.is_set()


class SimulatedClock:
  """Simulated time: it advances only when the thread that made the clock (the control loop) sleeps.

  Other threads' `sleep_until` waits until the control loop's time reaches the deadline: a policy that sleeps
  for its latency on this clock takes exactly that latency. `settle` waits (in real time) until the background
  job has finished or is asleep until a later time, so what happened by a given simulated time does not depend
  on thread scheduling. One background thread at a time may use the clock.
  """

  def __init__(self, start: float = 0.0):
    self._now = float(start)
    self._cv = threading.Condition()
    self._deadlines: list[float] = []
    self._driver = threading.get_ident()

  def now(self) -> float:
    with self._cv:
      return self._now

  def sleep_until(self, deadline: float) -> None:
    with self._cv:
      if threading.get_ident() == self._driver:
        self._now = max(self._now, float(deadline))
        self._cv.notify_all()
        return
      self._deadlines.append(float(deadline))
      self._cv.notify_all()
      while self._now < deadline:
        self._cv.wait()
      self._deadlines.remove(float(deadline))

  def settle(self, done: threading.Event) -> bool:
    with self._cv:
      while not done.is_set() and not any(d > self._now for d in self._deadlines):
        self._cv.wait(timeout=1e-3)  # `done` is set outside the condition: poll it
      return done.is_set()


class ChunkTimeline:
  """Which step of which chunk the robot executes at each control tick: the alignment every scheme shares.

  A chunk's step i is meant for the tick i ticks after the observation it was sampled from. `ticks` counts the
  actions taken, `index` is the current chunk's next step. A chunk asked for at tick k0 and received at tick k
  replaces the current one at index k - k0 (`switch`): the steps for ticks k0 .. k - 1 came from the old chunk,
  whose plan still to come at the launch (`remaining`) is what real-time chunking continues. Past a chunk's end
  its last action repeats (counted in `underruns`). Used by RealtimeExecutor (wall or simulated time) and by the
  closed-loop evaluation with simulated inference delays (pi0_jax.evaluate.rollout).
  """

  def __init__(self, horizon: int):
    self.horizon = int(horizon)
    self.chunk: np.ndarray | None = None
    self.index = 0
    self.ticks = 0
    self.underruns = 0

  def start(self, chunk: np.ndarray) -> None:
    """The first chunk, for the observation of tick 0."""
    self.chunk, self.index, self.ticks = chunk, 0, 0

  def remaining(self) -> np.ndarray:
    """The current chunk from its next step on ([n, A], n <= H, not padded)."""
    return self.chunk[self.index:]

  def switch(self, chunk: np.ndarray, launch_tick: int) -> int:
    """Replaces the chunk by one sampled from the observation of `launch_tick`; returns the index it starts at."""
    self.chunk, self.index = chunk, self.ticks - int(launch_tick)
    return self.index

  def peek(self) -> np.ndarray:
    """The action the next tick executes."""
    return self.chunk[min(self.index, self.horizon - 1)]

  def advance(self) -> np.ndarray:
    """One tick: the current chunk's next action."""
    if self.index >= self.horizon:
      self.underruns += 1
    action = self.peek()
    self.index += 1
    self.ticks += 1
    return action


@dataclasses.dataclass
class _Job:
  obs: Any
  prev: np.ndarray
  delay: int
  launch_tick: int
  start: float
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  chunk: np.ndarray | None = None
  latency: float = 0.0
  error: BaseException | None = None


class RealtimeExecutor:
  """Runs a chunking policy in a background thread behind a fixed-rate control loop (module docstring).

    infer              fn(obs, prev_actions [n, A] or None, inference_delay int) -> chunk [H, A]
    action_horizon     H, the chunk length
    execution_horizon  s, the fewest actions of a chunk executed before the next inference starts (1 <= s < H)
    tick               the control period in seconds
    latency_window     d comes from the largest of this many recent latencies
    initial_delay      d (ticks) before any latency was measured (when `start` runs no warm-up)
    max_delay          d is capped at this (e.g. a model's rtc_max_delay)
  """

  def __init__(self, infer: InferFn, *, action_horizon: int, execution_horizon: int, tick: float,
               clock: Clock | None = None, latency_window: int = 1, initial_delay: int = 1,
               max_delay: int | None = None):
    if not 1 <= execution_horizon < action_horizon:
      raise ValueError(f"execution_horizon {execution_horizon}: expected 1 <= s < action_horizon ({action_horizon}).")
    if tick <= 0 or latency_window < 1 or initial_delay < 1:
      raise ValueError(f"tick {tick} (> 0), latency_window {latency_window} and initial_delay {initial_delay} "
                       "(>= 1) are out of range.")
    self._infer, self.horizon, self.s, self.tick = infer, int(action_horizon), int(execution_horizon), float(tick)
    self._clock = clock or SystemClock()
    self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
    self._initial_delay, self._max_delay = int(initial_delay), max_delay
    self._timeline = ChunkTimeline(action_horizon)
    self._job: _Job | None = None
    self.log: list[dict[str, Any]] = []  # one record per inference that replaced the chunk
    self._jobs: queue.Queue[_Job | None] = queue.Queue()
    self._worker = threading.Thread(target=self._work, name="rtc-inference", daemon=True)
    self._worker.start()

  # --- the background thread ------------------------------------------------------------------------------

  def _work(self) -> None:
    while (job := self._jobs.get()) is not None:
      try:
        job.chunk = self._checked(self._infer(job.obs, job.prev, job.delay))
      except BaseException as e:  # pylint: disable=broad-except  (re-raised in the control loop)
        job.error = e
      job.latency = self._clock.now() - job.start
      job.done.set()

  def _checked(self, chunk) -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim != 2 or chunk.shape[0] != self.horizon:
      raise ValueError(f"infer returned a chunk of shape {chunk.shape}; expected [action_horizon={self.horizon}, "
                       "action_dim].")
    return chunk

  # --- the control loop -----------------------------------------------------------------------------------

  @property
  def underruns(self) -> int:
    """Ticks that ran past the current chunk's end (its last action repeated)."""
    return self._timeline.underruns

  @property
  def delay(self) -> int:
    """The inference delay d (ticks) the next inference is told: from the largest recent latency."""
    if not self._latencies:
      d = self._initial_delay
    else:
      d = max(1, math.ceil(max(self._latencies) / self.tick - 1e-6))
    return d if self._max_delay is None else min(d, int(self._max_delay))

  def start(self, obs, *, warmup: int = 2) -> np.ndarray:
    """The first chunk, inferred synchronously (before the loop runs); `warmup` RTC calls compile that path and
    the last one's latency seeds d. Returns the first chunk."""
    chunk = self._checked(self._infer(obs, None, 0))
    for _ in range(warmup):
      t0 = self._clock.now()
      self._infer(obs, chunk[self.s:], min(self.s, self.horizon - self.s))
      self._latencies.append(self._clock.now() - t0)
    self._timeline.start(chunk)
    return chunk

  def step(self, obs) -> np.ndarray:
    """One control tick: the action to execute now. Does not wait for inference."""
    timeline = self._timeline
    if timeline.chunk is None:
      raise RuntimeError("RealtimeExecutor.step before start(obs): there is no chunk to execute yet.")
    job = self._job
    if job is not None and self._clock.settle(job.done):
      self._job = None
      if job.error is not None:
        raise RuntimeError("the policy's inference failed") from job.error
      executed = timeline.switch(job.chunk, job.launch_tick)
      self._latencies.append(job.latency)
      self.log.append({"launch_tick": job.launch_tick, "delay": job.delay, "executed": executed,
                       "latency": job.latency})
    d = self.delay
    if self._job is None and timeline.index >= max(self.s, d):
      prev = timeline.remaining()
      job = _Job(obs=obs, prev=prev, delay=min(d, len(prev)), launch_tick=timeline.ticks,
                 start=self._clock.now())
      self._job = job
      self._jobs.put(job)
      self._clock.settle(job.done)  # a simulated clock lets the job reach its first wait at this time
    return timeline.advance()

  def run(self, num_ticks: int, get_obs: Callable[[], Any], act: Callable[[np.ndarray], None]) -> None:
    """`num_ticks` ticks at the fixed rate: act(step(get_obs())), then sleep to the next tick of the grid."""
    next_tick = self._clock.now()
    for _ in range(num_ticks):
      act(self.step(get_obs()))
      next_tick += self.tick
      self._clock.sleep_until(next_tick)

  def close(self) -> None:
    """Stops the background thread: now if it is idle, else once the inference in flight returns (not waited for;
    its result is dropped)."""
    self._jobs.put(None)
    if self._job is None:
      self._worker.join()
