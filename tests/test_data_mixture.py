"""Mixture: n^0.43 weights, the seeded sampler's empirical shares, explicit weights, the pipeline's mix."""

import numpy as np
import pytest
import tensorflow as tf

import test_data_helpers as helpers
from pi0_jax.data import mixture, pipeline


def _draw(weights, n, seed):
  streams = [tf.data.Dataset.from_tensors(np.int32(i)).repeat() for i in range(len(weights))]
  ds = mixture.mix(streams, weights, seed=seed).take(n).batch(10_000)
  return np.concatenate(list(ds.as_numpy_iterator()))


def test_weights_are_n_to_the_043():
  counts = [10_000, 500, 20]
  w = mixture.mixture_weights(counts)
  raw = np.array(counts, float) ** 0.43
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)
  np.testing.assert_allclose(w, [0.7436, 0.2051, 0.0514], atol=2e-4)  # 52.48, 14.47, 3.63 of 70.58.
  np.testing.assert_allclose(mixture.mixture_weights(counts, exponent=1.0), np.array(counts) / 10_520)
  np.testing.assert_allclose(mixture.mixture_weights(counts, explicit=[None, 52.48, None])[1],
                             52.48 / (raw[0] + 52.48 + raw[2]))
  with pytest.raises(ValueError, match="positive frame count"):
    mixture.mixture_weights([10, 0])


def test_empirical_shares_match_weights():
  w = mixture.mixture_weights([10_000, 500, 20])
  ids = _draw(w, 50_000, seed=7)
  assert len(ids) == 50_000
  shares = np.bincount(ids, minlength=3) / len(ids)
  np.testing.assert_allclose(shares, w, atol=0.01)
  np.testing.assert_array_equal(ids[:5000], _draw(w, 5000, seed=7))  # Seeded: the same order again.
  assert not np.array_equal(ids[:5000], _draw(w, 5000, seed=8))


def test_pipeline_mixes_by_frames(tmp_path):
  """Two datasets of 40 and 10 frames: the pipeline's weights are their n^0.43, and its batches follow them."""
  big = helpers.write(tmp_path, "pi0_test_mix_big", [helpers.marked_episode(10, i) for i in range(4)])
  small = helpers.write(tmp_path, "pi0_test_mix_small", [helpers.marked_episode(10, 50)])
  config = helpers.tiny_config()
  data = pipeline.make_train_data(
      helpers.data_config({"big": big, "small": small}, tmp_path / "stats", augment=False, shuffle_buffer=64),
      config, global_batch=32, tokenize_fn=helpers.fake_tokenize(config.max_token_len))
  expected = mixture.mixture_weights([40, 10])
  np.testing.assert_allclose([r["weight"] for r in data.report()], expected)
  assert [r["frames"] for r in data.report()] == [40, 10]
  index = np.concatenate([data.next_host_batch()["dataset_index"] for _ in range(16)])
  share_small = np.mean(index == 1)
  assert abs(share_small - expected[1]) < 0.06, (share_small, expected)
