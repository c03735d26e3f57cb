"""Closed loop with a simulated inference delay (pi0_jax.evaluate.rollout.run_episode with a method and delay).

An untrained tiny pi0 with rtc_max_delay = 1 (pi0_jax.serve.untrained: a real export of random weights; what the
schedule does does not depend on the weights) drives short reach-v3 episodes at 32 px in one spawned worker (the
policy runs beside MuJoCo as in an evaluation). The records keep every executed action and every chunk, so the
schedule of each method is checked value by value against the chunks the policy returned; a scripted policy
checks the schedule alone.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os

import numpy as np
import pytest

from pi0_jax.envs import metaworld as mw
from pi0_jax.evaluate import report as report_lib, rollout

TASK, H, S, STEPS = "reach-v3", 4, 2, 9  # tiny preset: action_horizon 4; s = replan_every


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from pi0_jax.serve.untrained import write_untrained_export
  root = tmp_path_factory.mktemp("rtc_eval")
  export_dir = write_untrained_export(str(root / "export"), preset="tiny", prompts=list(mw.TASK_INSTRUCTIONS.values()),
                                      rtc_max_delay=1)
  return {"root": root, "export": export_dir, "render": mw.RenderOptions(image_size=32)}


@pytest.fixture(scope="module")
def episodes(trained):
  """{label: record} of one episode of TASK per schedule, all in one worker process."""
  plain = rollout.RolloutSettings(export_dir=trained["export"], tasks=(TASK,), episodes_per_task=1, replan_every=S,
                                  max_steps=STEPS, num_steps=2, render=trained["render"], record_actions=True,
                                  platform="cpu")
  delayed = dataclasses.replace(plain, methods=rollout.METHODS, delays=(0, 1, 2))
  schedules = [("sync", 0), ("naive", 0), ("naive", 1), ("naive", 2), ("sync", 2), ("rtc", 2), ("rtc_trained", 1)]
  jobs = [(rollout.EpisodeJob(rollout.POLICY, TASK, 0), plain)]
  jobs += [(rollout.EpisodeJob(rollout.POLICY, TASK, 0, m, d), delayed) for m, d in schedules]
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=rollout._init_worker, initargs=("cpu",)) as pool:
    futures = [pool.submit(rollout.run_episode, job, settings) for job, settings in jobs]
    return {job.label: f.result() for (job, _), f in zip(jobs, futures)}


def _clip(x) -> np.ndarray:
  return np.clip(np.asarray(x, np.float32), -1.0, 1.0)


def test_delay_zero_is_the_plain_closed_loop(episodes):
  plain = episodes["policy"]
  assert len(plain["actions"]) == plain["steps"] == STEPS or plain["success"]
  for label in ("sync@0", "naive@0"):
    e = episodes[label]
    np.testing.assert_array_equal(np.asarray(e["actions"], np.float32), np.asarray(plain["actions"], np.float32))
    for key in ("success", "first_success_step", "steps", "return", "replans"):
      assert e[key] == plain[key], (label, key)


@pytest.mark.parametrize("d", [1, 2])
def test_naive_executes_the_old_plan_then_the_new_chunk_from_step_d(episodes, d):
  e = episodes[f"naive@{d}"]
  actions, chunks = np.asarray(e["actions"], np.float32), e["chunks"]
  assert [c["launch_tick"] for c in chunks] == [0] + list(range(S, e["steps"] - d, S))
  expected = [_clip(chunks[0]["chunk"])[:S]]
  for old, new in zip(chunks, chunks[1:]):
    assert new["tick"] == new["launch_tick"]  # naive: the chunk's clock is the world's
    expected += [_clip(old["chunk"])[S:S + d], _clip(new["chunk"])[d:S]]
  expected.append(_clip(chunks[-1]["chunk"])[S:S + d])
  np.testing.assert_array_equal(actions, np.concatenate(expected)[:len(actions)])
  # The switch jump: |new[d] - old[s + d]| (the old chunk's next step at the switch tick), clipped as executed.
  want = [np.linalg.norm(_clip(new["chunk"])[d] - _clip(old["chunk"])[min(S + d, H - 1)])
          for old, new in zip(chunks, chunks[1:]) if new["launch_tick"] + d < e["steps"]]
  np.testing.assert_allclose(e["switch_jumps"], want, rtol=1e-6)


def test_sync_holds_still_then_runs_the_new_chunk_from_step_0(episodes):
  d = 2
  e = episodes[f"sync@{d}"]
  actions, chunks = np.asarray(e["actions"], np.float32), e["chunks"]
  t = S
  np.testing.assert_array_equal(actions[:S], _clip(chunks[0]["chunk"])[:S])
  for new in chunks[1:]:
    assert new["tick"] == t
    hold = actions[t:t + d]
    np.testing.assert_array_equal(hold[:, :3], 0.0)
    np.testing.assert_array_equal(hold[:, 3], actions[t - 1, 3])  # the gripper command is kept
    np.testing.assert_array_equal(actions[t + d:t + d + S], _clip(new["chunk"])[:S][:len(actions) - t - d])
    t += d + S
  assert len(e["switch_jumps"]) == len(chunks) - 1


def test_rtc_is_told_the_old_plan(episodes):
  # rtc_trained feeds old[s : s + d] as the new chunk's first d steps (clean tokens): they come back unchanged
  # (up to the normalise / unnormalise round trip).
  e = episodes["rtc_trained@1"]
  for old, new in zip(e["chunks"], e["chunks"][1:]):
    np.testing.assert_allclose(np.asarray(new["chunk"])[:1], np.asarray(old["chunk"])[S:S + 1], rtol=1e-5, atol=1e-5)
  # Guided RTC pulls toward the old plan without copying it: its chunks differ from naive's (same noise).
  guided, naive = episodes["rtc@2"]["chunks"], episodes["naive@2"]["chunks"]
  np.testing.assert_array_equal(guided[0]["chunk"], naive[0]["chunk"])  # the first chunk has no old plan
  assert not np.allclose(guided[1]["chunk"], naive[1]["chunk"])


def test_summary_and_report(episodes, tmp_path):
  records = [e for label, e in episodes.items() if label != "policy"]
  sweep = rollout.summarize_delays(records)
  assert list(sweep) == list(rollout.METHODS)
  assert sorted(sweep["naive"]) == ["0", "1", "2"] and sorted(sweep["rtc_trained"]) == ["1"]
  row = sweep["naive"]["2"]
  jumps = episodes["naive@2"]["switch_jumps"]
  assert row["episodes"] == 1 and row["successes"] == int(episodes["naive@2"]["success"])
  assert row["ci95"] == pytest.approx(list(rollout.wilson_interval(row["successes"], 1)))
  assert row["switches"] == len(jumps) and row["switch_jump_mean"] == pytest.approx(np.mean(jumps))
  assert row["switch_jump_max"] == pytest.approx(np.max(jumps))
  settings = {"replan_every": S, "episodes_per_task": 1, "tasks": [TASK], "max_steps": STEPS}
  closed = {"settings": settings, "summary": {}, "episodes": records, "delay_sweep": sweep}
  paths = report_lib.write_report(str(tmp_path), {"export": {"dir": "x"}, "closed_loop": closed})
  assert os.path.getsize(paths["delay_plot"]) > 0
  with open(paths["markdown"]) as f:
    md = f.read()
  assert "| naive | 2 |" in md and "switch jump mean" in md and "delay_sweep.png" in md


def test_rtc_trained_needs_a_delay_trained_model(trained):
  settings = rollout.RolloutSettings(export_dir=trained["export"], tasks=(TASK,), episodes_per_task=1,
                                     replan_every=S, max_steps=STEPS, render=trained["render"],
                                     methods=("rtc_trained",), delays=(0, 2))
  with pytest.raises(ValueError, match=r"model_config.json has rtc_max_delay = 1.*up to 2"):
    rollout.run_closed_loop(settings, progress=False)
  with pytest.raises(ValueError, match=r"d <= s <= H - d"):
    rollout.run_closed_loop(dataclasses.replace(settings, methods=("naive",), delays=(3,)), progress=False)


def test_episode_jobs_run_the_policy_per_method_and_delay():
  settings = rollout.RolloutSettings(export_dir="unused", tasks=(TASK,), episodes_per_task=2,
                                     methods=("sync", "rtc"), delays=(0, 3))
  jobs = rollout.episode_jobs(settings, [rollout.POLICY, rollout.BASELINE])
  assert [j.label for j in jobs] == ["sync@0"] * 2 + ["sync@3"] * 2 + ["rtc@0"] * 2 + ["rtc@3"] * 2 + ["baseline"] * 2
  assert [j.episode for j in jobs] == [0, 1] * 5
  with pytest.raises(ValueError, match="both or neither"):
    rollout.RolloutSettings(export_dir="unused", tasks=(TASK,), methods=("sync",))


@pytest.mark.parametrize("method", ["sync", "naive", "rtc"])
@pytest.mark.parametrize("d", [0, 1, 2])
def test_schedule_with_a_scripted_policy(method, d):
  """Chunk c is c + step / 100 in every dim: which chunk and step each executed action came from is readable."""
  horizon, s, asked = 5, 2, []

  chunks = [np.tile(((c + np.arange(horizon) / 100) / 10)[:, None], (1, mw.ACTION_DIM)).astype(np.float32)
            for c in range(12)]

  def ask(observation, prev):
    asked.append((observation, None if prev is None else np.array(prev)))
    return chunks[len(asked) - 1]

  schedule = rollout._Schedule(horizon, s, d, method, ask)
  got = np.stack([schedule.action(t, t) for t in range(12)])
  chunk = lambda c, i: chunks[c][i, 0]  # noqa: E731
  want, c, t = [], 0, 0
  want += [chunk(0, i) for i in range(s)]
  while len(want) < 12:
    c += 1
    if method == "sync":  # hold (zero xyz, gripper kept), then the new chunk from step 0
      want += [None] * d + [chunk(c, i) for i in range(s)]
    else:  # the old chunk's steps s .. s + d - 1, then the new chunk from step d
      want += [chunk(c - 1, s + i) for i in range(d)] + [chunk(c, i) for i in range(d, s)]
  for t, w in enumerate(want[:12]):
    if w is None:
      np.testing.assert_array_equal(got[t], [0, 0, 0, got[t - 1][3]])
    else:
      np.testing.assert_array_equal(got[t], np.full(mw.ACTION_DIM, w, np.float32), err_msg=f"step {t}")
  # Asked at every chunk boundary with that step's observation; rtc gets the old plan still to come.
  period = s + (d if method == "sync" else 0)
  assert [o for o, _ in asked] == [0] + list(range(s, 12, period))
  for k, (_, prev) in enumerate(asked[1:], start=0):
    if method == "rtc":
      np.testing.assert_array_equal(prev, chunks[k][s:])
    else:
      assert prev is None
  if method != "sync":  # the jump: |new[d] - old[s + d]|
    np.testing.assert_allclose(schedule.jumps[0], np.linalg.norm(np.full(4, chunk(1, d) - chunk(0, s + d))), rtol=1e-6)
