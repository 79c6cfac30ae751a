"""RandAugment and random erasing, the fine-tuning augmentations (in tf.data).

The reference fine-tuning recipe uses timm's `rand-m9-mstd0.5-inc1`: per
image, 2 distinct operations out of the 15 below, each applied with
probability 0.5, at magnitude ~ N(9, 0.5) clipped to [0, 10] (out of 10),
with the "increasing" variants (a higher magnitude always means a stronger
change). After normalisation, random erasing replaces one rectangle (2-33 %
of the area, aspect ratio 0.3-3.3) with N(0, 1) noise per pixel, with
probability 0.25.

These are written from the published definitions of the operations (PIL's
ImageOps / ImageEnhance semantics on 0..255 pixels). Differences: geometric
operations interpolate bilinearly (the reference: bicubic), and all
randomness is stateless, drawn from the per-example seed the pipeline
passes in, so the stream is reproducible and resumable.

Images are float32 [H, W, C] with C = 1 or 3, pixels in 0..255.
"""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

MAX_MAGNITUDE = 10.0
APPLY_PROBABILITY = 0.5  # each chosen operation, as timm's RandAugment
_ERASE_ATTEMPTS = 10


# ------------------------------------------------------------ operations --
# Each takes (image, magnitude in [0, 10], sign in {-1, +1}, fill per channel).


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor) -> tf.Tensor:
  """PIL ImageEnhance: degenerate + factor * (image - degenerate), clipped."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grayscale(image: tf.Tensor) -> tf.Tensor:
  """PIL's "L" conversion (ITU-R 601-2 luma), keeping the channel count."""
  if image.shape[-1] == 1:
    return image
  luma = tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)
  return tf.tile(luma, [1, 1, 3])


def _enhance_factor(magnitude, sign):
  # The "increasing" enhance ops: factor 1 +- 0.9 * magnitude / 10.
  return 1.0 + sign * magnitude / MAX_MAGNITUDE * 0.9


def auto_contrast(image, magnitude, sign, fill):
  low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  scaled = (image - low) * 255.0 / tf.maximum(high - low, 1.0)
  return tf.where(high > low, scaled, image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
  """PIL's ImageOps.equalize for one channel of integer-valued floats."""
  values = tf.cast(channel, tf.int32)
  histogram = tf.math.bincount(values, minlength=256, maxlength=256)
  last_nonzero = tf.reduce_max(tf.where(histogram > 0, tf.range(256), 0))
  step = (tf.reduce_sum(histogram) - histogram[last_nonzero]) // 255
  lut = (tf.cumsum(histogram, exclusive=True) + step // 2) // tf.maximum(step, 1)
  equalized = tf.cast(tf.gather(tf.minimum(lut, 255), values), tf.float32)
  return tf.where(step > 0, equalized, channel)


def equalize(image, magnitude, sign, fill):
  return tf.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], -1)


def invert(image, magnitude, sign, fill):
  return 255.0 - image


def posterize(image, magnitude, sign, fill):
  bits = 4 - tf.cast(magnitude / MAX_MAGNITUDE * 4, tf.int32)  # keep 4..0 bits
  step = tf.cast(tf.bitwise.left_shift(1, 8 - bits), tf.float32)
  return tf.floor(image / step) * step


def solarize(image, magnitude, sign, fill):
  threshold = 256.0 - tf.floor(magnitude / MAX_MAGNITUDE * 256)
  return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, magnitude, sign, fill):
  added = tf.minimum(image + tf.floor(magnitude / MAX_MAGNITUDE * 110), 255.0)
  return tf.where(image < 128.0, added, image)


def color(image, magnitude, sign, fill):
  return _blend(_grayscale(image), image, _enhance_factor(magnitude, sign))


def contrast(image, magnitude, sign, fill):
  mean = tf.floor(tf.reduce_mean(_grayscale(image)[..., 0]) + 0.5)
  return _blend(mean, image, _enhance_factor(magnitude, sign))


def brightness(image, magnitude, sign, fill):
  return _blend(tf.zeros_like(image), image, _enhance_factor(magnitude, sign))


def sharpness(image, magnitude, sign, fill):
  """Blend with PIL's SMOOTH kernel; the one-pixel border stays as is."""
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  channels = image.shape[-1]
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
  smooth = tf.round(smooth)
  interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]]) > 0
  degenerate = tf.where(interior, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return _blend(degenerate, image, _enhance_factor(magnitude, sign))


def _affine(image, transform, fill):
  """Output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2).

  Pixels that come from outside the image take `fill`; a transformed
  all-ones image tells how much of each output pixel was inside.
  """
  transform = tf.cast(tf.concat([transform, [0.0, 0.0]], 0)[None], tf.float32)
  height, width = tf.shape(image)[0], tf.shape(image)[1]

  def warp(x):
    return tf.raw_ops.ImageProjectiveTransformV3(
      images=x[None],
      transforms=transform,
      output_shape=[height, width],
      fill_value=0.0,
      interpolation="BILINEAR",
      fill_mode="CONSTANT",
    )[0]

  inside = warp(tf.ones_like(image[..., :1]))
  return warp(image) + (1.0 - inside) * fill


def rotate(image, magnitude, sign, fill):
  angle = sign * magnitude / MAX_MAGNITUDE * 30.0 * math.pi / 180.0
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = width / 2.0, height / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])
  return _affine(image, transform, fill)


def shear_x(image, magnitude, sign, fill):
  shear = sign * magnitude / MAX_MAGNITUDE * 0.3
  return _affine(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0]), fill)


def shear_y(image, magnitude, sign, fill):
  shear = sign * magnitude / MAX_MAGNITUDE * 0.3
  return _affine(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0]), fill)


def translate_x(image, magnitude, sign, fill):
  pixels = sign * magnitude / MAX_MAGNITUDE * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0]), fill)


def translate_y(image, magnitude, sign, fill):
  pixels = sign * magnitude / MAX_MAGNITUDE * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels]), fill)


# timm's _RAND_INCREASING_TRANSFORMS, in its order.
OPERATIONS = (
  auto_contrast,
  equalize,
  invert,
  rotate,
  posterize,
  solarize,
  solarize_add,
  color,
  contrast,
  brightness,
  sharpness,
  shear_x,
  shear_y,
  translate_x,
  translate_y,
)


def rand_augment(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  num_ops: int,
  magnitude: float,
  magnitude_std: float,
  fill: Sequence[float],
) -> tf.Tensor:
  """`num_ops` distinct random operations, each applied with probability 0.5.

  Args:
    image: float32 [H, W, C], 0..255.
    seed: [2] int stateless seed.
    magnitude, magnitude_std: per operation, the magnitude is drawn from
      N(magnitude, magnitude_std) and clipped to [0, 10] (std 0: fixed).
    fill: per-channel pixel value (0..255) for areas that geometric
      operations uncover; the reference uses the dataset mean.
  """
  choice_seed, *op_seeds = tf.unstack(tf.random.experimental.stateless_split(seed, num_ops + 1))
  # Without replacement, as timm: the first num_ops of a random permutation.
  chosen = tf.argsort(tf.random.stateless_uniform([len(OPERATIONS)], choice_seed))[:num_ops]
  fill = tf.constant(fill, tf.float32)
  image = tf.round(tf.clip_by_value(image, 0.0, 255.0))  # operations act on 8-bit pixels
  for index in range(num_ops):
    apply_draw, sign_draw = tf.unstack(tf.random.stateless_uniform([2], op_seeds[index]))
    noise = tf.random.stateless_normal(
      [], tf.random.experimental.stateless_fold_in(op_seeds[index], 1)
    )
    level = tf.clip_by_value(magnitude + magnitude_std * noise, 0.0, MAX_MAGNITUDE)
    sign = tf.where(sign_draw < 0.5, -1.0, 1.0)
    branches = [
      lambda op=op: tf.round(tf.clip_by_value(op(image, level, sign, fill), 0.0, 255.0))
      for op in OPERATIONS
    ]
    augmented = tf.switch_case(chosen[index], branches)
    image = tf.where(apply_draw < APPLY_PROBABILITY, augmented, image)
  return image


def random_erasing(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  probability: float,
  area: tuple[float, float] = (0.02, 1 / 3),
  log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
) -> tf.Tensor:
  """timm's RandomErasing(mode="pixel", count 1) on a normalised image.

  With `probability`, the first of 10 (area, aspect ratio) draws that fits
  strictly inside the image is filled with N(0, 1) noise per pixel.
  """
  apply_seed, area_seed, ratio_seed, place_seed, noise_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 5)
  )
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  image_area = tf.cast(height * width, tf.float32)
  target = image_area * tf.random.stateless_uniform([_ERASE_ATTEMPTS], area_seed, *area)
  ratio = tf.exp(tf.random.stateless_uniform([_ERASE_ATTEMPTS], ratio_seed, *log_ratio))
  heights = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  fits = (heights < height) & (widths < width)
  first = tf.reduce_min(tf.where(fits, tf.range(_ERASE_ATTEMPTS), _ERASE_ATTEMPTS))
  found = first < _ERASE_ATTEMPTS
  first = tf.minimum(first, _ERASE_ATTEMPTS - 1)
  erase_height, erase_width = heights[first], widths[first]
  place = tf.random.stateless_uniform([2], place_seed)
  # Inclusive ranges, as random.randint(0, size - extent).
  top = tf.minimum(
    tf.cast(place[0] * tf.cast(height - erase_height + 1, tf.float32), tf.int32),
    height - erase_height,
  )
  left = tf.minimum(
    tf.cast(place[1] * tf.cast(width - erase_width + 1, tf.float32), tf.int32), width - erase_width
  )
  rows = tf.range(height)[:, None, None]
  cols = tf.range(width)[None, :, None]
  inside = (
    (rows >= top) & (rows < top + erase_height) & (cols >= left) & (cols < left + erase_width)
  )
  erase = inside & found & (tf.random.stateless_uniform([], apply_seed) < probability)
  noise = tf.random.stateless_normal(tf.shape(image), noise_seed)
  return tf.where(erase, noise, image)
