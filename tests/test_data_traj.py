"""Trajectory transforms: exact action chunks and pad masks, dim padding, subsampling."""

import numpy as np
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import pipeline, synthetic, traj

# The hand-computed chunks of a 5-step episode with H = 3: which step each chunk entry holds, and
# whether it is a real step (True) or past the episode end (False).
CHUNK_STEPS_5x3 = np.array([[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4], [4, 4, 4]])
PAD_MASK_5x3 = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)


def test_chunk_actions_hand_computed():
  actions = tf.constant(np.arange(5, dtype=np.float32)[:, None] * [1.0, 10.0])
  chunks, mask = traj.chunk_actions(actions, horizon=3)
  np.testing.assert_array_equal(mask.numpy(), PAD_MASK_5x3)
  np.testing.assert_array_equal(chunks.numpy()[..., 0], CHUNK_STEPS_5x3)
  np.testing.assert_array_equal(chunks.numpy()[..., 1], CHUNK_STEPS_5x3 * 10)


def test_chunk_longer_than_episode():
  chunks, mask = traj.chunk_actions(tf.constant([[7.0], [8.0]]), horizon=4)
  np.testing.assert_array_equal(mask.numpy(), [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(chunks.numpy()[..., 0], [[7, 8, 8, 8], [8, 8, 8, 8]])


def test_pad_dims_and_subsample():
  padded, mask = traj.pad_dims(tf.ones([2, 3]), 5)
  np.testing.assert_array_equal(padded.numpy(), [[1, 1, 1, 0, 0]] * 2)
  np.testing.assert_array_equal(mask.numpy(), [True, True, True, False, False])
  idx = traj.subsample_indices(10, 4, seed=tf.constant([1, 2], tf.int64)).numpy()
  assert len(idx) == 4 and len(set(idx)) == 4 and list(idx) == sorted(idx) and idx.max() < 10
  np.testing.assert_array_equal(traj.subsample_indices(3, 4, seed=tf.constant([1, 2], tf.int64)).numpy(), [0, 1, 2])


def test_subsampled_frames_keep_their_own_chunks():
  actions = np.arange(12, dtype=np.float32)[:, None]
  episode = {"images": {}, "image_masks": {}, "state": tf.zeros([12, 2]), "actions": tf.constant(actions),
             "prompt": tf.fill([12], "x"), "episode_id": tf.constant("ep")}
  frames = traj.to_frames(episode, horizon=3, action_dim=4, max_frames=5, seed=0)
  chunks = frames["actions"].numpy()[..., 0]
  assert chunks.shape == (5, 3)
  for row, mask in zip(chunks, frames["action_pad_mask"].numpy()):
    t = int(row[0])  # A frame's chunk starts at its own step and continues in order.
    np.testing.assert_array_equal(row, np.minimum(np.arange(t, t + 3), 11))
    np.testing.assert_array_equal(mask, np.arange(t, t + 3) < 12)


def test_five_step_episode_through_the_pipeline(tmp_path):
  """A 5-step episode read back from TFDS: frames in order, chunks, masks and padding exactly as by hand."""
  t = np.arange(5, dtype=np.float32)
  actions = np.stack([t + 1, 10 * (t + 1), -(t + 1), np.full(5, 0.5, np.float32)], -1)
  ep = synthetic.episode(5, seed=3)
  ep["action"] = actions
  d = helpers.write(tmp_path, "pi0_test_five_steps", [ep])
  config = helpers.tiny_config(action_horizon=3)
  data = pipeline.make_eval_data(
      helpers.data_config({"five": d}, tmp_path / "stats", datasets=[dict(name="five", dir=d, spec=helpers.SPEC,
                                                                          eval_split="train")]),
      config, global_batch=5, tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  batch = data.next_host_batch()

  mean, std = actions.mean(0), actions.std(0)
  normed = (actions - mean) / (std + 1e-6)
  expected = normed[CHUNK_STEPS_5x3]  # [5, 3, 4]
  np.testing.assert_array_equal(batch["action_pad_mask"], PAD_MASK_5x3)
  np.testing.assert_allclose(batch["actions"][..., :4], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["actions"][..., 4:], 0)
  np.testing.assert_array_equal(batch["action_dim_mask"], [[True] * 4 + [False] * 4] * 5)
  state = ep["observation"]["state"]
  np.testing.assert_allclose(batch["observation"].state[:, :4], (state - state.mean(0)) / (state.std(0) + 1e-6),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["observation"].state[:, 4:], 0)
  np.testing.assert_array_equal(batch["dataset_index"], 0)
