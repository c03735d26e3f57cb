"""The TF-free image ops (pi0_jax.data.image_ops) against TensorFlow's and the training pipeline's frames."""

import numpy as np
import pytest
import tensorflow as tf

from pi0_jax.data import image_ops, images


@pytest.mark.parametrize("size,target", [((480, 640), 32), ((480, 640), 224), ((37, 53), 32), ((100, 30), 224),
                                         ((224, 224), 224), ((7, 300), 64), ((481, 641), 224)])
def test_resize_with_pad_matches_tensorflow(size, target):
  frames = np.random.default_rng(sum(size)).integers(0, 256, (2, *size, 3), dtype=np.uint8)
  ref = tf.image.resize_with_pad(tf.cast(frames, tf.float32), target, target).numpy()
  ours = image_ops.resize_with_pad(frames, target, target)
  assert ours.shape == ref.shape == (2, target, target, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, ref, atol=1e-3)
  np.testing.assert_allclose(image_ops.resize_with_pad(frames[0], target, target), ref[0], atol=1e-3)
  rounded = tf.cast(tf.round(tf.clip_by_value(ref, 0.0, 255.0)), tf.uint8).numpy()
  assert np.abs(image_ops.to_model_images(frames, target).astype(int) - rounded).max() <= 1


def test_pipeline_frames_equal_numpy_frames():
  """The pipeline's eval frames (decode, resize with pad, round: TF) and the Policy's (numpy) agree."""
  frame = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
  slots = {"base_0_rgb": tf.io.encode_png(frame), "left_wrist_0_rgb": tf.constant("")}
  masks = {"base_0_rgb": tf.constant(True), "left_wrist_0_rgb": tf.constant(False)}
  out = images.process_frame_images(slots, masks, resolution=32, frame_seed=None, params=None)
  ours = image_ops.to_model_images(frame[None], 32)
  assert np.abs(out["base_0_rgb"].numpy().astype(int) - ours[0].astype(int)).max() <= 1
  np.testing.assert_array_equal(out["left_wrist_0_rgb"].numpy(), 0)


def test_model_range_is_shared_and_masks_to_zero():
  assert images.to_model_range is image_ops.to_model_range  # One definition for the pipeline and the Policy.
  pixels = np.array([0, 1, 127, 128, 255], np.uint8).reshape(1, 5, 1, 1).repeat(3, -1).repeat(2, 0)
  out = image_ops.to_model_range(pixels, np.array([True, False]))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[0, :, 0, 0], [-1.0, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 1.0],
                             atol=1e-6)
  np.testing.assert_array_equal(out[1], 0)
  import jax.numpy as jnp
  # On the devices (XLA may divide by multiplying with the reciprocal): equal to float32 rounding.
  np.testing.assert_allclose(np.asarray(image_ops.to_model_range(pixels, np.array([True, False]), jnp)), out,
                             atol=1e-6)
