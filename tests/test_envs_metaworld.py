"""The shared Meta-World module: seeded variants, goal visible or hidden, experts, errors (no rendering)."""

import itertools

import numpy as np
import pytest

from pi0_jax.envs import metaworld as mw


def _first(task, seed, n, **kw):
  return list(itertools.islice(mw.variants(task, seed, **kw), n))


def test_variants_are_seeded_and_goal_visibility_only_changes_the_observation():
  a, b, other = _first("reach-v3", 0, 2), _first("reach-v3", 0, 2), _first("reach-v3", 1, 1)
  assert [(s, i) for s, i, _ in a] == [(s, i) for s, i, _ in b] and a[0][0] != other[0][0]
  assert [i for _, i, _ in a] == [0, 1]
  hidden = _first("reach-v3", 0, 1, goal_visible=False)
  env = mw.make_env("reach-v3")
  try:
    visible_obs = mw.reset_to(env, a[0][2])
    hidden_obs = mw.reset_to(env, hidden[0][2])
    again = mw.reset_to(env, a[0][2])  # And back: one env serves both.
  finally:
    env.close()
  assert visible_obs.shape == hidden_obs.shape == (mw.ENV_STATE_DIM,)
  # Same placement; the goal (last 3 entries) is zeroed when hidden, as in Meta-World's ML benchmarks.
  np.testing.assert_array_equal(visible_obs[:-3], hidden_obs[:-3])
  assert np.any(visible_obs[-3:] != 0) and np.all(hidden_obs[-3:] == 0)
  np.testing.assert_array_equal(again, visible_obs)


@pytest.mark.filterwarnings("ignore:Constant")  # The scripted experts warn when an action is clipped.
def test_expert_solves_a_visible_goal_variant():
  env, expert = mw.make_env("reach-v3"), mw.expert_policy("reach-v3")
  _, _, variant = _first("reach-v3", 0, 1)[0]
  obs = mw.reset_to(env, variant)
  success = False
  for _ in range(200):
    obs, _, _, _, info = env.step(np.clip(expert.get_action(obs), -1, 1))
    success = success or bool(info["success"])
  env.close()
  assert success


def test_errors_name_the_bad_value():
  with pytest.raises(ValueError, match="'nope-v3': not a Meta-World v3 environment"):
    mw.make_env("nope-v3")
  with pytest.raises(ValueError, match="scene_camera: expected one of"):
    mw.RenderOptions(scene_camera="front")
  with pytest.raises(ValueError, match="missing \\['wrist_camera'"):
    mw.RenderOptions.from_build_options({"image_size": 32, "scene_camera": "corner", "antialias_samples": 0})
  assert set(mw.TASK_INSTRUCTIONS) == set(mw.ML10_TRAIN_TASKS) | set(mw.ML10_TEST_TASKS)
