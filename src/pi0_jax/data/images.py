"""Decoding, resizing and augmenting camera frames (after the shuffle; TF graph ops).

Frames arrive encoded (PNG/JPEG bytes). Each is decoded, resized with
padding (aspect ratio kept, black bars) to the model's resolution and, at
training time only, augmented:

  geometric (not on wrist cameras, whose view is tied to the gripper): a random crop keeping `crop_scale` of
    each side, resized back, then a rotation by up to +-`rotate_degrees`, composed into one bilinear
    resampling;
  photometric (every camera): brightness and contrast jitter, then saturation and hue jitter as one linear
    colour transform (scale and rotate the chroma plane in YIQ space: several times cheaper than HSV).

Every op of every camera slot draws from its own stateless seed, derived from the frame's seed with
`stateless_split`, so no two ops share randomness and the result depends only on (seed, frame position):
reproducible, and restorable with the iterator. Frames leave tf.data as uint8 and become float32 in
[-1, 1] (uint8 / 127.5 - 1) in the batch (image_ops.to_model_range); an empty slot is all zeros.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

# The [-1, 1] value range of model images, shared with the TF-free Policy (re-exported for the pipeline).
from pi0_jax.data.image_ops import AugmentParams, to_model_range  # noqa: F401  (re-exported)


_OPS = ("crop", "rotate", "brightness", "contrast", "saturation", "hue")


def decode_and_resize(encoded: tf.Tensor, present: tf.Tensor, resolution: int) -> tf.Tensor:
  """Encoded frame -> float32 [R, R, 3] with pixel values in [0, 255]; zeros where `present` is False."""
  def real():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.image.resize_with_pad(tf.cast(image, tf.float32), resolution, resolution)

  return tf.cond(present, real, lambda: tf.zeros([resolution, resolution, 3], tf.float32))


# RGB <-> YIQ: Y is luma, (I, Q) the chroma plane; hue is an angle in that plane, saturation a radius.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def warp_matrix(size: int, crop_scale: float, offset: tf.Tensor, radians: tf.Tensor) -> tf.Tensor:
  """Projective transform [8] for a square crop of side crop_scale * size at `offset` [2] (x, y), resized
  back to `size` and rotated by `radians` about the centre: maps output pixels to input pixels."""
  k = tf.constant(crop_scale, tf.float32)
  c = (size - 1) / 2
  cos, sin = tf.cos(radians), tf.sin(radians)
  return tf.stack([k * cos, -k * sin, offset[0] + k * (c - cos * c + sin * c),
                   k * sin, k * cos, offset[1] + k * (c - sin * c - cos * c), 0.0, 0.0])


def warp(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
  """One bilinear resampling of [H, W, C] (edges extended)."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="NEAREST")
  return out[0]


def colour_matrix(saturation: tf.Tensor, hue_radians: tf.Tensor) -> tf.Tensor:
  """[3, 3] acting on RGB row vectors: scale the chroma plane by `saturation`, rotate it by `hue_radians`.

  A linear stand-in for HSV saturation/hue jitter at a fraction of its cost; luma is untouched."""
  cos, sin = tf.cos(hue_radians), tf.sin(hue_radians)
  zero, one = tf.zeros_like(cos), tf.ones_like(cos)
  chroma = tf.stack([tf.stack([one, zero, zero]), tf.stack([zero, saturation * cos, -saturation * sin]),
                     tf.stack([zero, saturation * sin, saturation * cos])])
  m = tf.constant(_YIQ_TO_RGB, tf.float32) @ chroma @ tf.constant(_RGB_TO_YIQ, tf.float32)
  return tf.transpose(m)


def augment(image: tf.Tensor, seeds: tf.Tensor, params: AugmentParams, geometric: bool) -> tf.Tensor:
  """image float32 [R, R, 3] in [0, 1]; seeds int64 [len(_OPS), 2], one per op.

  Crop, resize and rotation are composed into one resampling; saturation and hue into one colour matrix.
  An op whose strength is zero (or whose range is a single point) is left out, so configs can turn ops off.
  """
  seed = dict(zip(_OPS, tf.unstack(seeds)))
  size = image.shape[0]
  crop = geometric and params.crop_scale < 1
  turn = geometric and params.rotate_degrees > 0
  if crop or turn:
    scale = params.crop_scale if crop else 1.0
    offset = (tf.random.stateless_uniform([2], seed["crop"], 0.0, (1 - scale) * size) if crop else tf.zeros([2]))
    angle = (tf.random.stateless_uniform([], seed["rotate"], -params.rotate_degrees, params.rotate_degrees)
             if turn else tf.constant(0.0))
    image = warp(image, warp_matrix(size, scale, offset, angle * math.pi / 180))
  if params.brightness > 0:
    image = tf.image.stateless_random_brightness(image, params.brightness, seed=seed["brightness"])
  if params.contrast[0] < params.contrast[1]:
    image = tf.image.stateless_random_contrast(image, *params.contrast, seed=seed["contrast"])
  saturate = params.saturation[0] < params.saturation[1]
  shift_hue = params.hue > 0
  if saturate or shift_hue:
    factor = (tf.random.stateless_uniform([], seed["saturation"], *params.saturation) if saturate
              else tf.constant(1.0))
    hue = (tf.random.stateless_uniform([], seed["hue"], -params.hue, params.hue) if shift_hue
           else tf.constant(0.0))
    image = image @ colour_matrix(factor, hue * 2 * math.pi)
  return tf.clip_by_value(image, 0.0, 1.0)


def op_seeds(frame_seed: tf.Tensor, num_slots: int) -> tf.Tensor:
  """int64 [num_slots, len(_OPS), 2]: a distinct stateless seed for every (camera slot, op) of a frame."""
  seeds = tf.random.experimental.stateless_split(tf.cast(frame_seed, tf.int64), num=num_slots * len(_OPS))
  return tf.reshape(seeds, [num_slots, len(_OPS), 2])


def process_frame_images(images: dict, masks: dict, *, resolution: int, frame_seed: tf.Tensor | None,
                         params: AugmentParams | None) -> dict:
  """{slot: encoded} -> {slot: uint8 [R, R, 3]}; augmented when `params` is given; zeros for empty slots.

  Frames stay uint8 until they reach the host batch (to_model_range): a quarter of the memory in the
  prefetch buffer and in iterator checkpoints, and of the host-to-device traffic.
  """
  slots = sorted(images)
  if params is not None:
    seeds = op_seeds(frame_seed, len(slots))
  out = {}
  for i, slot in enumerate(slots):
    image = decode_and_resize(images[slot], masks[slot], resolution)
    if params is not None:
      augmented = augment(image / 255.0, seeds[i], params, geometric=params.wrist_marker not in slot) * 255.0
      # An empty slot stays exactly zero: brightness jitter would otherwise lift it.
      image = tf.where(masks[slot], augmented, image)
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    out[slot] = tf.ensure_shape(image, [resolution, resolution, 3])
  return out
