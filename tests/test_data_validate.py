"""Bad input: errors that name the dataset, the episode and the key; or counted skips when asked."""

import numpy as np
import pytest
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import pipeline, validate


def _make(directories, root, **overrides):
  config = helpers.tiny_config()  # Action horizon 4.
  return pipeline.make_train_data(helpers.data_config(directories, root / "stats", augment=False, **overrides),
                                  config, global_batch=4, tokenize_fn=helpers.fake_tokenize(config.max_token_len))


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
  """Episodes 0, 1, 3 are good; 2 has a NaN action, 4 an inf state, 5 no steps, 6 only 2 steps."""
  root = tmp_path_factory.mktemp("broken")
  eps = [helpers.marked_episode(6, i) for i in range(7)]
  eps[2]["action"][3, 1] = np.nan
  eps[4]["observation"]["state"][0, 2] = np.inf
  eps[5] = {"observation": {k: v[:0] for k, v in eps[5]["observation"].items()}, "action": eps[5]["action"][:0],
            "language_instruction": "nothing"}
  eps[6] = {"observation": {k: v[:2] for k, v in eps[6]["observation"].items()}, "action": eps[6]["action"][:2],
            "language_instruction": "short"}
  return helpers.write(root, "pi0_test_broken", eps), root


def test_bad_episodes_are_errors_naming_dataset_episode_and_key(broken):
  d, root = broken
  with pytest.raises(validate.DataError) as e:
    _make({"broken": d}, root)
  msg = str(e.value)
  assert "4 bad episode(s) in dataset 'broken', split 'train'" in msg
  assert "episode 2 (pi0_test_broken-train.tfrecord-00000-of-00001__2), key 'actions': 1 non-finite values, " \
         "first nan at step 3, dim 1" in msg
  assert "episode 4 (pi0_test_broken-train.tfrecord-00000-of-00001__4), key 'state': 1 non-finite values, " \
         "first inf at step 0, dim 2" in msg
  assert "episode 5 (pi0_test_broken-train.tfrecord-00000-of-00001__5), key 'steps': empty episode (0 steps)" in msg
  assert "episode 6 (train[6]), key 'steps': 2 steps, fewer than the minimum 4" in msg
  assert "skip_bad_episodes=True" in msg


def test_skipped_episodes_are_counted_and_never_seen(broken):
  d, root = broken
  data = _make({"broken": d}, root, skip_bad_episodes=True)
  report = data.report()[0]
  assert report["skipped_bad_episodes"] == 3 and report["skipped_short_episodes"] == 1
  assert report["episodes"] == 3 and report["frames"] == 18
  assert "skipped 3 bad and 1 short episodes" in data.report_lines()[0]
  batches = [data.next_host_batch() for _ in range(15)]
  assert helpers.episode_markers(batches, data.plans[0].norm_stats["state"]) == {0, 1, 3}
  for b in batches:
    assert np.isfinite(b["actions"]).all() and np.isfinite(b["observation"].state).all()


def test_short_episodes_can_be_kept(tmp_path):
  d = helpers.write(tmp_path, "pi0_test_short", [helpers.marked_episode(2, 0), helpers.marked_episode(3, 1)])
  data = _make({"short": d}, tmp_path, min_episode_length=1)
  assert data.report()[0]["frames"] == 5
  masks = np.concatenate([data.next_host_batch()["action_pad_mask"] for _ in range(5)])
  # Horizon 4 over episodes of 2 and 3 steps: only these pad masks can occur.
  allowed = {(1, 1, 0, 0), (1, 0, 0, 0), (1, 1, 1, 0)}
  assert {tuple(m.astype(int)) for m in masks} == allowed


@pytest.mark.parametrize("change, expected", [
    (lambda ep: ep["observation"].pop("wrist_image"),
     "key 'steps/observation/wrist_image': missing (camera slot 'left_wrist_0_rgb')"),
    (lambda ep: ep["observation"].update(state=ep["observation"]["state"].astype(np.int32)),
     "key 'steps/observation/state': dtype int32, expected a float (state)"),
    (lambda ep: ep["observation"].update(state=ep["observation"]["state"][:, :3]),
     "key 'steps/observation/state': state has 3 dims, expected 4 (DatasetSpec.state_dim)"),
    (lambda ep: ep.update(action=np.zeros((len(ep["action"]), 12), np.float32)),
     "key 'steps/action': action has 12 dims, expected 4 (DatasetSpec.action_dim)"),
    (lambda ep: ep["observation"].update(image=ep["observation"]["image"][..., :1]),
     "key 'steps/observation/image': a Tensor (16, 16, 1) uint8, expected an encoded image"),
    (lambda ep: ep.pop("language_instruction"), "key 'steps/language_instruction': missing (instruction)"),
], ids=["missing_camera", "int_state", "state_dims", "action_dims", "raw_image", "no_instruction"])
def test_malformed_features_fail_before_reading(tmp_path, change, expected):
  ep = helpers.marked_episode(5, 0)
  change(ep)
  d = helpers.write(tmp_path, "pi0_test_malformed", [ep])
  with pytest.raises(validate.DataError, match="Dataset does not fit its DatasetSpec") as e:
    _make({"malformed": d}, tmp_path)
  assert f"dataset 'malformed', every episode, {expected}" in str(e.value)


def test_assertions_in_the_graph_name_the_episode():
  """The backstop for data no scan covered: the TF error carries dataset, episode id and key."""
  episode = {"state": tf.zeros([5, 2]), "actions": tf.constant([[0.0], [np.nan], [0.0], [0.0], [0.0]]),
             "episode_id": tf.constant("ds-train.tfrecord-00000-of-00001__7")}
  ds = tf.data.Dataset.from_tensors(episode).map(
      lambda e: tf.tuple([e["actions"]], control_inputs=validate.assert_episode(e, "mine", 4))[0])
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    next(iter(ds))
  msg = e.value.message
  assert "[dataset mine, episode] [ds-train.tfrecord-00000-of-00001__7] [key actions: NaN or inf]" in msg, msg


def test_episode_index_from_tfds_id():
  assert validate.episode_index("x-train.tfrecord-00002-of-00004__5", [10, 20, 30, 40]) == 35
  assert validate.episode_index("odd", [3]) == -1
