"""The real-time executor: on a simulated clock, the executed actions are exactly those the scheme defines."""

import math
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from pi0_jax.realtime import RealtimeExecutor, SimulatedClock, SystemClock

H, S = 8, 3
TICK = Fraction(1, 8)


class Chunker:
  """A policy whose chunk c, sampled from observation o, is [[100 c + i, o] for i < H]; call c > 0 takes
  latencies[c - 1] seconds on the clock (call 0 is the synchronous first chunk)."""

  def __init__(self, clock, latencies, fail_at=None):
    self.clock, self.latencies, self.fail_at = clock, latencies, fail_at
    self.calls = []

  def __call__(self, obs, prev, delay):
    c = len(self.calls)
    self.calls.append((obs, None if prev is None else np.array(prev), delay))
    if c == self.fail_at:
      raise ValueError("policy failure")
    if c > 0 and self.clock is not None:
      self.clock.sleep_until(self.clock.now() + float(self.latencies[c - 1]))
    return np.array([[100 * c + i, obs] for i in range(H)], np.float64)


def expected_run(num_ticks, latencies, window=1, initial_delay=1):
  """The scheme on an absolute tick timeline: chunk c, launched at tick k_c, has its step i at tick k_c + i;
  each tick executes the step for that tick of the newest chunk that has arrived (its last step once past its
  end); a launch at tick k arrives at k + ceil(latency / tick) and is told d from the largest of the last `window`
  latencies (in whole ticks)."""
  chunk_launch = {0: 0}  # chunk 0 (from start) is aligned with the first tick
  current, in_flight, recent = 0, None, []
  actions, calls, underruns = [], [(-1, None, 0)], 0
  for k in range(num_ticks):
    if in_flight is not None and k >= in_flight[1]:
      current, in_flight = in_flight[0], None
      recent.append(math.ceil(Fraction(latencies[current - 1]) / TICK))
    d = max(recent[-window:]) if recent else initial_delay
    executed = k - chunk_launch[current]
    if in_flight is None and executed >= max(S, d):
      c = len(calls)
      chunk_launch[c] = k
      prev = [[100 * current + i, calls[current][0]] for i in range(executed, H)]
      calls.append((k, np.array(prev, np.float64).reshape(-1, 2), min(d, H - executed)))
      in_flight = (c, k + max(1, math.ceil(Fraction(latencies[c - 1]) / TICK)))
    step = k - chunk_launch[current]
    underruns += step >= H
    actions.append([100 * current + min(step, H - 1), calls[current][0]])
  return np.array(actions, np.float64), calls, underruns


def run_simulated(num_ticks, latencies, **kwargs):
  clock = SimulatedClock()
  policy = Chunker(clock, latencies)
  executor = RealtimeExecutor(policy, action_horizon=H, execution_horizon=S, tick=float(TICK), clock=clock, **kwargs)
  executor.start(-1, warmup=0)
  ticks = iter(range(num_ticks))
  executed = []
  executor.run(num_ticks, lambda: next(ticks), executed.append)
  executor.close()
  return np.array(executed), policy.calls, executor, clock


# Latencies in seconds: exact multiples of the tick, values between ticks, one that outlasts the chunk (0.9 s =
# 7.2 ticks: the chunk runs out and its last action is held), and swings that make the estimate of d wrong.
LATENCIES = ["0.3", "0.125", "0.5", "0.2", "0.9", "0.05", "0.26", "0.4", "0.1", "0.6", "0.25", "0.3"] * 3


@pytest.mark.parametrize("window,initial_delay", [(1, 1), (3, 2)])
def test_executed_actions_follow_the_scheme(window, initial_delay):
  num_ticks = 60
  got, calls, executor, clock = run_simulated(num_ticks, LATENCIES, latency_window=window,
                                              initial_delay=initial_delay)
  want, want_calls, underruns = expected_run(num_ticks, LATENCIES, window, initial_delay)
  np.testing.assert_array_equal(got, want)
  assert len(calls) == len(want_calls) > 8
  for (obs, prev, d), (want_obs, want_prev, want_d) in zip(calls, want_calls):
    assert (obs, d) == (want_obs, want_d)
    if want_prev is not None:
      np.testing.assert_array_equal(prev, want_prev)
  assert executor.underruns == underruns > 0
  assert clock.now() == num_ticks * float(TICK)  # the loop kept its rate: inference never held it up
  # The log: every swap executed as many old actions as whole ticks elapsed, and d was right when latencies held.
  for record in executor.log:
    assert record["executed"] == math.ceil(record["latency"] / float(TICK) - 1e-6)
  if window == 1:
    assert any(r["executed"] == r["delay"] for r in executor.log)
  assert any(r["executed"] != r["delay"] for r in executor.log)


def test_chunks_stay_aligned_with_wall_time():
  """On the real clock timing varies, but every executed action is the step of its chunk for that tick."""
  clock = SystemClock()

  class Sleeper(Chunker):
    def __call__(self, obs, prev, delay):
      out = super().__call__(obs, prev, delay)
      time.sleep(0.015)
      return out

  policy = Sleeper(None, [])
  executor = RealtimeExecutor(policy, action_horizon=H, execution_horizon=S, tick=0.01, clock=clock)
  executor.start(-1, warmup=1)
  ticks = iter(range(40))
  executed = []
  executor.run(40, lambda: next(ticks), executed.append)
  executor.close()
  executed = np.array(executed)
  assert len(executor.log) >= 3
  for k, (value, launch) in enumerate(executed):
    launch = 0 if launch < 0 else launch
    assert value % 100 == min(k - launch, H - 1), (k, value, launch)
  assert all(r["executed"] >= 1 for r in executor.log)


def test_policy_errors_reach_the_control_loop():
  clock = SimulatedClock()
  executor = RealtimeExecutor(Chunker(clock, ["0.2"], fail_at=1), action_horizon=H, execution_horizon=S,
                              tick=float(TICK), clock=clock)
  executor.start(0, warmup=0)
  with pytest.raises(RuntimeError, match="inference failed"):
    for _ in range(H):
      executor.step(0)
      clock.sleep_until(clock.now() + float(TICK))
  executor.close()
  with pytest.raises(ValueError, match=r"execution_horizon 8: expected 1 <= s < action_horizon \(8\)"):
    RealtimeExecutor(Chunker(clock, []), action_horizon=H, execution_horizon=H, tick=0.1)
