"""Dataset specs as data: transforms, fixed prompts, filters and subsampling, without pipeline branches."""

import dataclasses

import numpy as np
import pytest

import test_data_helpers as helpers
from pi0_jax.data import pipeline, specs


def _double_state(steps):
  obs = dict(steps["observation"], state=steps["observation"]["state"] * 2)
  return dict(steps, observation=obs)


def _make(d, root, spec, **overrides):
  config = helpers.tiny_config()
  table = {"custom": spec}
  return pipeline.make_train_data(
      helpers.data_config({}, root / "stats", augment=False, datasets=[dict(name="custom", dir=d)], **overrides),
      config, global_batch=4, specs=table, tokenize_fn=helpers.fake_tokenize(config.max_token_len))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("specs")
  eps = [helpers.marked_episode(6, i, instruction="" if i == 1 else "open the drawer") for i in range(4)]
  return helpers.write(root, "pi0_test_specs", eps), eps, root


def test_transform_fixed_prompt_and_instruction_filter(dataset):
  d, eps, root = dataset
  spec = dataclasses.replace(specs.METAWORLD, transform=_double_state, instruction_key=None, prompt="do it",
                             cameras={"base_0_rgb": "wrist_image", "left_wrist_0_rgb": None})
  data = _make(d, root, spec)
  state = np.concatenate([ep["observation"]["state"] for ep in eps]) * 2
  np.testing.assert_allclose(data.plans[0].norm_stats["state"]["mean"], state.mean(0), rtol=1e-5)
  batch = data.next_host_batch()
  tokens, _ = helpers.fake_tokenize(6)("do it")
  np.testing.assert_array_equal(batch["observation"].tokenized_prompt, np.tile(tokens, (4, 1)))
  assert not batch["observation"].image_masks["left_wrist_0_rgb"].any()
  np.testing.assert_array_equal(batch["observation"].images["left_wrist_0_rgb"], 0)

  filtered = _make(d, root, dataclasses.replace(specs.METAWORLD, require_instruction=True))
  assert filtered.report()[0]["filtered_episodes"] == 1 and filtered.report()[0]["frames"] == 18
  seen = helpers.episode_markers([filtered.next_host_batch() for _ in range(12)],
                                 filtered.plans[0].norm_stats["state"])
  assert seen == {0, 2, 3}
  kept = np.concatenate([eps[i]["observation"]["state"] for i in (0, 2, 3)])
  np.testing.assert_allclose(filtered.plans[0].norm_stats["state"]["mean"], kept.mean(0), rtol=1e-5)


def test_subsampling_long_episodes(dataset):
  d, _, root = dataset
  data = _make(d, root, specs.METAWORLD, max_frames_per_episode=2)
  assert data.report()[0]["frames"] == 8  # 4 episodes x 2 frames.
  batch = data.next_host_batch()
  assert batch["actions"].shape == (4, 4, 8)


def test_fingerprint_follows_what_changes_the_numbers():
  base = specs.METAWORLD.fingerprint()
  assert dataclasses.replace(specs.METAWORLD).fingerprint() == base
  assert dataclasses.replace(specs.METAWORLD, transform=_double_state).fingerprint() != base
  assert dataclasses.replace(specs.METAWORLD, state_keys=("env_state",)).fingerprint() != base
  with pytest.raises(ValueError, match="instruction_key or a fixed prompt"):
    specs.DatasetSpec(cameras={}, state_keys=("s",), instruction_key=None)
  with pytest.raises(ValueError, match="No standardisation spec for dataset 'nope'"):
    specs.get_spec("nope")


def _make_from_config(d, root, spec):
  config = helpers.tiny_config()
  return pipeline.make_train_data(
      helpers.data_config({}, root / "stats", augment=False, datasets=[dict(name="custom", dir=d, spec=spec)]),
      config, global_batch=4, tokenize_fn=helpers.fake_tokenize(config.max_token_len))


def test_spec_written_in_the_config(dataset):
  """No table entry needed: the spec is a dict of fields (callables as module:function) or module:NAME."""
  d, eps, root = dataset
  inline = dict(cameras={"base_0_rgb": "image", "left_wrist_0_rgb": "wrist_image"}, state_keys=["state"],
                transform="test_data_specs:_double_state", prompt="do it", instruction_key=None)
  data = _make_from_config(d, root, inline)
  state = np.concatenate([ep["observation"]["state"] for ep in eps]) * 2
  np.testing.assert_allclose(data.plans[0].norm_stats["state"]["mean"], state.mean(0), rtol=1e-5)
  assert data.plans[0].spec.transform is _double_state
  tokens, _ = helpers.fake_tokenize(6)("do it")
  np.testing.assert_array_equal(data.next_host_batch()["observation"].tokenized_prompt, np.tile(tokens, (4, 1)))
  # The same spec named by import path is the same spec: same fingerprint, so the same cached statistics.
  named = _make_from_config(d, root, "pi0_jax.data.specs:METAWORLD")
  assert named.plans[0].spec == specs.METAWORLD
  assert named.plans[0].spec.fingerprint() != data.plans[0].spec.fingerprint()
  assert specs.resolve(dict(cameras=dict(specs.METAWORLD.cameras), state_keys=["state"], state_dim=4, action_dim=4),
                       name="x").fingerprint() == specs.METAWORLD.fingerprint()


@pytest.mark.parametrize("spec, message", [
    (dict(cameras={}, state_keys=["state"], gripper="open"), r"datasets\[0\] \('custom'\)\.spec: unknown DatasetSpec "
     r"fields \['gripper'\]"),
    (dict(cameras={}, state_keys=["state"], transform="test_data_specs:no_such_fn"),
     r"datasets\[0\] \('custom'\)\.spec\.transform: module 'test_data_specs' has no 'no_such_fn'"),
    (dict(cameras={}, state_keys=["state"], episode_filter="no_such_module:f"),
     r"\.spec\.episode_filter: cannot import module 'no_such_module'"),
    (dict(cameras={}, state_keys="state"), r"\('custom'\)\.spec: DatasetSpec\.state_keys: expected a list"),
    ("pi0_jax.data.specs:get_spec", r"\('custom'\)\.spec: 'pi0_jax.data.specs:get_spec' is a function, expected a "
     "DatasetSpec"),
    ("no_such_entry", "No standardisation spec for dataset 'no_such_entry'"),
])
def test_bad_spec_in_the_config_names_dataset_and_field(spec, message):
  config = helpers.tiny_config()
  cfg = helpers.data_config({}, "/nonexistent", datasets=[dict(name="custom", dir="/nonexistent", spec=spec)])
  with pytest.raises(ValueError, match=message):
    pipeline.make_train_data(cfg, config, global_batch=4, tokenize_fn=helpers.fake_tokenize(config.max_token_len))


def _reads_a_missing_key(steps):
  return dict(steps, action=steps["observation"]["joint_torques"])


def test_transform_reading_a_missing_key_fails_before_reading(dataset):
  d, _, root = dataset
  spec = dict(cameras={"base_0_rgb": "image"}, state_keys=["state"], transform="test_data_specs:_reads_a_missing_key")
  with pytest.raises(ValueError, match=r"dataset 'custom', every episode: the spec's transform _reads_a_missing_key "
                                       r"reads key 'joint_torques'"):
    _make_from_config(d, root, spec)
