"""Camera frames to the model's input in numpy, exactly as the training pipeline makes them (no TensorFlow).

The pipeline (pi0_jax.data.images, TF graph ops) resizes frames with tf.image.resize_with_pad, rounds them to
uint8 and maps them to [-1, 1] in the batch; the Policy does the same next to a simulator, where TensorFlow
must not be imported (MuJoCo's EGL rendering crashes in a process that has). Both take the value range from
here (`to_model_range`), and `resize_with_pad` follows TF's kernel to float32 rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["AugmentParams", "resize_with_pad", "to_model_images", "to_model_range"]

# uint8 pixel p becomes p / PIXEL_SCALE - 1: 0 -> -1, 255 -> 1.
PIXEL_SCALE = 127.5


def _bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (lower, upper) and weights of one axis, as TF's half-pixel-centre bilinear kernel has them.

  All in float32, in TF's order of operations: x_in = (x_out + 0.5) * (in / out) - 0.5, clamped at the edges.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  x = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(x)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(x), in_size - 1).astype(np.int64)
  return lower, upper, (x - floor).astype(np.float32)


def _resized_size_and_padding(height: int, width: int, target_height: int, target_width: int):
  """(resized h, w), (pad top, pad left) computed in float32 the way tf.image.resize_with_pad does."""
  f32 = np.float32
  ratio = max(f32(width) / f32(target_width), f32(height) / f32(target_height))
  h_float, w_float = f32(height) / ratio, f32(width) / ratio
  resized = (int(np.floor(h_float)), int(np.floor(w_float)))
  pad = (max(0, int(np.floor((f32(target_height) - h_float) / f32(2)))),
         max(0, int(np.floor((f32(target_width) - w_float) / f32(2)))))
  return resized, pad


def resize_with_pad(images: np.ndarray, target_height: int, target_width: int) -> np.ndarray:
  """tf.image.resize_with_pad in numpy: bilinear resize keeping the aspect ratio, then centred zero padding.

  images: [h, w, C] or [B, h, w, C] of any real dtype (uint8 frames are usual). Returns float32 of shape
  [target_height, target_width, C] (or with the batch axis), pixel values on the input's scale. The arithmetic
  follows TF's kernel (half-pixel centres, no antialiasing, float32 throughout), so results agree with
  TensorFlow's to float32 rounding.
  """
  images = np.asarray(images)
  if images.ndim not in (3, 4):
    raise ValueError(f"resize_with_pad: expected [h, w, C] or [B, h, w, C], got shape {images.shape}.")
  if target_height <= 0 or target_width <= 0:
    raise ValueError(f"resize_with_pad: target size must be positive, got {target_height}x{target_width}.")
  batched = images.ndim == 4
  x = images if batched else images[None]
  b, h, w, c = x.shape
  if h == 0 or w == 0:
    raise ValueError(f"resize_with_pad: empty image of shape {images.shape}.")
  (rh, rw), (pt, pl) = _resized_size_and_padding(h, w, target_height, target_width)
  y_lo, y_hi, y_lerp = _bilinear_axis(h, rh)
  x_lo, x_hi, x_lerp = _bilinear_axis(w, rw)
  # Rows first, from the (small) integer image; only the rows and columns used are ever converted to float.
  rows_lo, rows_hi = x[:, y_lo].astype(np.float32), x[:, y_hi].astype(np.float32)
  xl = x_lerp[None, None, :, None]
  top = rows_lo[:, :, x_lo] + (rows_lo[:, :, x_hi] - rows_lo[:, :, x_lo]) * xl
  bottom = rows_hi[:, :, x_lo] + (rows_hi[:, :, x_hi] - rows_hi[:, :, x_lo]) * xl
  resized = top + (bottom - top) * y_lerp[None, :, None, None]
  out = np.zeros((b, target_height, target_width, c), np.float32)
  out[:, pt:pt + rh, pl:pl + rw] = resized
  return out if batched else out[0]


def to_model_images(images: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [B, h, w, 3] -> uint8 [B, R, R, 3]: resized with padding and rounded, as the training pipeline does."""
  resized = resize_with_pad(images, resolution, resolution)
  return np.round(np.clip(resized, 0.0, 255.0)).astype(np.uint8)


def to_model_range(images, masks, xp=np):
  """uint8 [B, R, R, 3] -> float32 in [-1, 1] (x / 127.5 - 1); exactly 0 where masks [B] is False.

  `xp` is numpy for host batches or jax.numpy for arrays already on the devices."""
  x = xp.asarray(images).astype(xp.float32) / xp.float32(PIXEL_SCALE) - xp.float32(1)
  return xp.where(xp.asarray(masks)[:, None, None, None], x, xp.float32(0))


@dataclasses.dataclass(frozen=True)
class AugmentParams:
  """Training-time augmentation strengths (defaults close to Octo's and openpi's)."""

  crop_scale: float = 0.95  # Fraction of each side kept by the random crop.
  rotate_degrees: float = 5.0
  brightness: float = 0.2  # Max additive delta on [0, 1] pixels.
  contrast: tuple[float, float] = (0.8, 1.2)
  saturation: tuple[float, float] = (0.8, 1.2)
  hue: float = 0.05  # Max rotation of hue, as a fraction of the full circle.
  # Slots whose name contains this get only photometric ops.
  wrist_marker: str = "wrist"
