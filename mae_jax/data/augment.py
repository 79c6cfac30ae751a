"""Per-example image transforms in TensorFlow (run inside tf.data).

Training follows the reference MAE recipe (torchvision's RandomResizedCrop
with bicubic interpolation, then a random horizontal flip, then mean/std
normalisation). Evaluation resizes the short side to image_size /
crop_fraction and takes the center crop, as the reference fine-tuning eval.

All randomness is stateless: every random op takes an explicit [2] int seed
which the pipeline derives from (seed, process, example position), so the
same seed always produces the same images, in any process, after a restart.

Images are uint8 [H, W, C] in; float32 [size, size, C] normalised out.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import tensorflow as tf

from mae_jax.data import randaugment

# torchvision's RandomResizedCrop tries this many (area, ratio) draws before
# falling back to a center crop.
_CROP_ATTEMPTS = 10


def decode(image: tf.Tensor, stored_channels: int | None) -> tf.Tensor:
  """Encoded JPEG/PNG bytes -> uint8 [H, W, C]; pixels pass through as is."""
  if image.dtype != tf.string:
    return image
  # Decoding into the stored channel count gives a static channel dimension;
  # unknown or RGBA storage is decoded as RGB (alpha dropped).
  channels = stored_channels if stored_channels in (1, 3) else 3
  image = tf.io.decode_image(image, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """Converts RGB <-> grayscale so the image has `channels` channels."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 3 and channels == 1:
    return tf.image.rgb_to_grayscale(image)
  if have == 1 and channels == 3:
    return tf.tile(image, [1, 1, 3])
  raise ValueError(f"cannot convert images with {have} channels to {channels}")


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
  """0..255 pixels -> (pixel / 255 - mean) / std, per channel, float32."""
  image = tf.cast(image, tf.float32) / 255.0
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def resize(image: tf.Tensor, height, width) -> tf.Tensor:
  """Bicubic resize to float32 in 0..255.

  Antialiasing matters when shrinking (ImageNet photos -> 224): without it
  TF's bicubic aliases, unlike the PIL resize the reference uses. Bicubic
  overshoots at edges, so we clip back to the pixel range as PIL does.
  """
  image = tf.image.resize(
    tf.cast(image, tf.float32), [height, width], method="bicubic", antialias=True
  )
  return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(
  image: tf.Tensor, seed: tf.Tensor, *, size: int, scale: Sequence[float], ratio: Sequence[float]
) -> tf.Tensor:
  """torchvision's RandomResizedCrop: a random window resized to size x size.

  The window covers a uniform `scale` fraction of the area with a
  log-uniform `ratio` (width / height). Like torchvision we make 10 draws and
  keep the first that fits, else fall back to the largest center crop whose
  ratio is within `ratio`; the draws are vectorised instead of a loop.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  top, left, crop_height, crop_width = _crop_window(height, width, seed, scale, ratio)
  window = tf.slice(image, [top, left, 0], [crop_height, crop_width, -1])
  window = resize(window, size, size)
  window.set_shape([size, size, image.shape[-1]])
  return window


def _crop_window(height, width, seed, scale, ratio):
  """Returns (top, left, crop_height, crop_width) of a RandomResizedCrop."""
  area_seed, ratio_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)

  target_area = (
    height_f
    * width_f
    * tf.random.stateless_uniform([_CROP_ATTEMPTS], area_seed, minval=scale[0], maxval=scale[1])
  )
  aspect = tf.exp(
    tf.random.stateless_uniform(
      [_CROP_ATTEMPTS], ratio_seed, minval=math.log(ratio[0]), maxval=math.log(ratio[1])
    )
  )
  widths = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  heights = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
  # Index of the first draw that fits (argmax does not promise the first).
  first = tf.reduce_min(tf.where(fits, tf.range(_CROP_ATTEMPTS), _CROP_ATTEMPTS))
  found = first < _CROP_ATTEMPTS
  first = tf.minimum(first, _CROP_ATTEMPTS - 1)

  # Fallback: the whole image, trimmed to the nearest allowed ratio, centered.
  image_ratio = width_f / height_f
  too_tall = image_ratio < ratio[0]
  too_wide = image_ratio > ratio[1]
  fallback_width = tf.where(too_wide, tf.cast(tf.round(height_f * ratio[1]), tf.int32), width)
  fallback_height = tf.where(too_tall, tf.cast(tf.round(width_f / ratio[0]), tf.int32), height)

  crop_height = tf.where(found, heights[first], fallback_height)
  crop_width = tf.where(found, widths[first], fallback_width)
  uniform = tf.random.stateless_uniform([2], offset_seed)
  # floor(u * (n + 1)) is uniform over 0..n; the min guards float rounding.
  random_top = tf.minimum(
    tf.cast(uniform[0] * tf.cast(height - crop_height + 1, tf.float32), tf.int32),
    height - crop_height,
  )
  random_left = tf.minimum(
    tf.cast(uniform[1] * tf.cast(width - crop_width + 1, tf.float32), tf.int32), width - crop_width
  )
  top = tf.where(found, random_top, (height - crop_height) // 2)
  left = tf.where(found, random_left, (width - crop_width) // 2)
  return top, left, crop_height, crop_width


def resize_short_side_and_center_crop(
  image: tf.Tensor, size: int, crop_fraction: float
) -> tf.Tensor:
  """Resize the short side to size / crop_fraction, then center crop size.

  With crop_fraction=1 and a square image this is a plain resize.
  """
  # As the reference's int(input_size / crop_pct); the epsilon absorbs float
  # error (e.g. 224 / 0.875 must be 256, not 255).
  short = max(size, int(size / crop_fraction + 1e-6))
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  portrait = height > width
  new_height = tf.where(portrait, tf.cast(short * height_f / width_f, tf.int32), short)
  new_width = tf.where(portrait, short, tf.cast(short * width_f / height_f, tf.int32))
  image = resize(image, new_height, new_width)
  top = tf.cast(tf.round(tf.cast(new_height - size, tf.float32) / 2), tf.int32)
  left = tf.cast(tf.round(tf.cast(new_width - size, tf.float32) / 2), tf.int32)
  image = tf.slice(image, [top, left, 0], [size, size, -1])
  image.set_shape([size, size, image.shape[-1]])
  return image


def train_transform(image: tf.Tensor, seed: tf.Tensor, data_config: Any) -> tf.Tensor:
  """uint8 [H, W, C] -> augmented, normalised float32 [S, S, C].

  Args:
    seed: [2] int seed, unique per example and epoch.
    data_config: reads image_size, random_resized_crop, crop_scale,
      crop_ratio, horizontal_flip, mean, std, and the fine-tuning extras
      randaugment_* and random_erasing (see `randaugment.py`).
  """
  size = data_config.image_size
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if data_config.random_resized_crop:
    image = random_resized_crop(
      image,
      crop_seed,
      size=size,
      scale=tuple(data_config.crop_scale),
      ratio=tuple(data_config.crop_ratio),
    )
  else:
    image = resize(image, size, size)
    image.set_shape([size, size, image.shape[-1]])
  if data_config.horizontal_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  # Fine-tuning extras (off for pretraining). Their seeds are folded in
  # rather than split off, so turning them on leaves the crop/flip draws
  # (and every pretraining stream) unchanged.
  if data_config.randaugment_ops:
    image = randaugment.rand_augment(
      image,
      tf.random.experimental.stateless_fold_in(seed, 1),
      num_ops=data_config.randaugment_ops,
      magnitude=data_config.randaugment_magnitude,
      magnitude_std=data_config.randaugment_magnitude_std,
      fill=[round(255 * m) for m in data_config.mean],
    )
  image = normalize(image, data_config.mean, data_config.std)
  if data_config.random_erasing:
    image = randaugment.random_erasing(
      image,
      tf.random.experimental.stateless_fold_in(seed, 2),
      probability=data_config.random_erasing,
    )
  return image


def eval_transform(image: tf.Tensor, data_config: Any) -> tf.Tensor:
  """uint8 [H, W, C] -> resized, center-cropped, normalised float32."""
  image = resize_short_side_and_center_crop(
    image, data_config.image_size, data_config.eval_crop_fraction
  )
  return normalize(image, data_config.mean, data_config.std)
