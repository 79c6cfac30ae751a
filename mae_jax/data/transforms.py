"""Per-example image transforms in numpy and Pillow (run in Grain workers).

Training follows the reference MAE recipe: torchvision's RandomResizedCrop
(scale 0.2-1 of the area, log-uniform width/height ratio 3/4-4/3, ten draws
then a centre-crop fallback, bicubic), a random horizontal flip, mean/std
normalisation. Evaluation resizes the short side to image_size /
crop_fraction and takes the centre crop. Pillow's bicubic resize is the one
the reference runs (torchvision on PIL images), antialiasing included.

Fast JPEG decoding (`data.jpeg_reduced_decode`, on by default): the crop box
is drawn from the JPEG header alone, then libjpeg-turbo (through
`simplejpeg`) decodes at the smallest of its DCT scales (1/2, 1/4, 1/8) that
still leaves the crop at least image_size pixels on each side, and Pillow
resizes that. Shrinking in the DCT is a box-like average before the bicubic,
so pixels differ slightly from decoding at full size (docs/data.md has the
figures); the crop boxes, and so the augmentation distribution, are the
same. Off: every image is decoded at full size, as the reference.

All randomness comes from the `numpy.random.Generator` the pipeline passes
in, seeded from (seed, global example position): the same seed gives the
same images in any process, worker or host count, and after a restart.

Images in: encoded JPEG/PNG bytes, or uint8 [H, W, C] arrays (digits).
Images out: float32 [size, size, channels], normalised.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import simplejpeg
from PIL import Image

from mae_jax.data import randaugment

# torchvision's RandomResizedCrop tries this many (area, ratio) draws before
# falling back to a centre crop.
CROP_ATTEMPTS = 10

# A crop box: (top, left, height, width) in pixels of the full-size image.
Box = tuple[int, int, int, int]


class UndecodableImage(ValueError):
  """Raised for bytes that are not a readable JPEG or PNG image."""


# --------------------------------------------------------------- decoding --


def _is_jpeg(encoded: bytes) -> bool:
  return encoded[:3] == b"\xff\xd8\xff"


def image_size_of(image: bytes | np.ndarray) -> tuple[int, int]:
  """(height, width) without decoding the pixels (JPEG header, PNG header)."""
  if isinstance(image, np.ndarray):
    return image.shape[0], image.shape[1]
  try:
    if _is_jpeg(image):
      height, width, _, _ = simplejpeg.decode_jpeg_header(image)
      return height, width
    with Image.open(io.BytesIO(image)) as opened:
      return opened.height, opened.width
  except Exception as error:  # Each decoder has its own error types.
    raise UndecodableImage(f"{type(error).__name__}: {error}") from error


def decode_image(
  image: bytes | np.ndarray,
  channels: int,
  *,
  min_height: int = 0,
  min_width: int = 0,
  fast: bool = False,
) -> Image.Image:
  """Encoded bytes (or uint8 pixels) -> a Pillow image ("L", "RGB", "RGBX").

  For JPEGs, `min_height`/`min_width` > 0 let libjpeg-turbo decode at a
  reduced DCT scale whose result is still at least that large, and `fast`
  uses its faster integer IDCT and chroma upsampling (a few % faster, pixel
  values within a few levels); other formats and arrays come back at full
  size. Colour JPEGs are decoded to RGBX, Pillow's own pixel layout, so
  handing them to Pillow copies nothing (`to_array` drops the X). What libjpeg-turbo cannot convert (CMYK
  JPEGs) goes through Pillow. Corrupt or truncated files raise
  `UndecodableImage` (strict: a "premature end" is an error, not a
  half-grey image).
  """
  mode = "L" if channels == 1 else "RGB"
  if isinstance(image, np.ndarray):
    pixels = match_channels(image, channels)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  if _is_jpeg(image):
    try:
      pixels = simplejpeg.decode_jpeg(
        image,
        colorspace="GRAY" if channels == 1 else "RGBX",
        min_height=min_height,
        min_width=min_width,
        fastdct=fast,
        fastupsample=fast,
        strict=True,
      )
      raw_mode = "L" if channels == 1 else "RGBX"
      size = (pixels.shape[1], pixels.shape[0])
      return Image.frombuffer(mode, size, pixels, "raw", raw_mode, 0, 1)
    except ValueError:
      pass  # Pillow decides: CMYK decodes there, a corrupt file fails there too.
  try:
    with Image.open(io.BytesIO(image)) as opened:
      return opened.convert(mode)
  except Exception as error:  # Each decoder has its own error types.
    raise UndecodableImage(f"{type(error).__name__}: {error}") from error


def to_array(image: Image.Image) -> np.ndarray:
  """A Pillow "L", "RGB" or "RGBX" image -> uint8 [H, W, 1 or 3]."""
  if image.mode == "RGBX":
    image = image.convert("RGB")
  pixels = np.asarray(image)
  return pixels if pixels.ndim == 3 else pixels[..., None]


def decode(image: bytes | np.ndarray, channels: int) -> np.ndarray:
  """Encoded bytes (or pixels) -> uint8 [H, W, channels], at full size."""
  if isinstance(image, np.ndarray):
    return match_channels(image, channels)
  return to_array(decode_image(image, channels))


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Converts uint8 [H, W, C] between RGB and grayscale (Pillow's luma)."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 3 and channels == 1:
    return np.asarray(Image.fromarray(image).convert("L"))[..., None]
  if have == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  raise UndecodableImage(f"cannot convert images with {have} channels to {channels}")


# ------------------------------------------------------------- crop boxes --


def random_resized_crop_box(
  rng: np.random.Generator,
  height: int,
  width: int,
  scale: Sequence[float],
  ratio: Sequence[float],
) -> Box:
  """torchvision's RandomResizedCrop window: (top, left, height, width).

  Up to ten draws of a uniform area fraction in `scale` and a log-uniform
  width/height ratio in `ratio`; the first that fits is placed uniformly.
  If none fits, the whole image trimmed to the nearest allowed ratio,
  centred (the reference's fallback).
  """
  area = height * width
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(CROP_ATTEMPTS):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_low, log_high))
    crop_width = int(round(math.sqrt(target_area * aspect)))
    crop_height = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return top, left, crop_height, crop_width
  image_ratio = width / height
  if image_ratio < min(ratio):
    crop_width, crop_height = width, int(round(width / min(ratio)))
  elif image_ratio > max(ratio):
    crop_height, crop_width = height, int(round(height * max(ratio)))
  else:
    crop_height, crop_width = height, width
  return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def eval_resize_shape(height: int, width: int, size: int, crop_fraction: float) -> tuple[int, int]:
  """The reference eval's Resize(int(size / crop_pct)) of the short side."""
  # The epsilon absorbs float error (224 / 0.875 must be 256, not 255).
  short = max(size, int(size / crop_fraction + 1e-6))
  if height > width:
    return int(short * height / width), short
  return short, int(short * width / height)


# ----------------------------------------------------------------- resize --


def resize_box(
  image: Image.Image, box: tuple[float, float, float, float], height: int, width: int
) -> Image.Image:
  """Bicubic (antialiased, as Pillow) resize of `box` = (top, left, h, w)."""
  top, left, box_height, box_width = box
  return image.resize(
    (width, height), Image.BICUBIC, box=(left, top, left + box_width, top + box_height)
  )


def _decode_box(
  image: bytes | np.ndarray, box: Box, size: int, channels: int, reduced: bool
) -> Image.Image:
  """Decodes `image` and resizes its full-size `box` to size x size.

  With `reduced`, a JPEG is decoded at the smallest DCT scale that keeps
  the box at least `size` pixels on each side, and the box is scaled to
  the decoded image's coordinates (a float box: the window is not rounded).
  """
  top, left, box_height, box_width = box
  if not reduced or isinstance(image, np.ndarray) or not _is_jpeg(image):
    return resize_box(decode_image(image, channels), box, size, size)
  # Only the power-of-two scales: libjpeg-turbo's others (3/8, 5/8, ...)
  # decode slower than full size.
  reduction = 1
  while reduction < 8 and min(box_height, box_width) >= 2 * reduction * size:
    reduction *= 2
  height, width = image_size_of(image)
  decoded = decode_image(
    image,
    channels,
    min_height=math.ceil(height / reduction) if reduction > 1 else 0,
    min_width=math.ceil(width / reduction) if reduction > 1 else 0,
    fast=True,
  )
  scale_y, scale_x = decoded.height / height, decoded.width / width
  scaled = (top * scale_y, left * scale_x, box_height * scale_y, box_width * scale_x)
  return resize_box(decoded, scaled, size, size)


# -------------------------------------------------------------- normalise --


def normalize(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 [H, W, C] -> (pixel / 255 - mean) / std, float32.

  One multiply-add per value in float32, over rows viewed as W * C values
  with the per-channel constants tiled along them: broadcasting a length-C
  vector directly makes numpy run C-long inner loops, about 20x slower.
  """
  height, width, channels = pixels.shape
  std = np.asarray(std, np.float32)
  scale = np.tile(1.0 / (255.0 * std), width).astype(np.float32)
  offset = np.tile(-np.asarray(mean, np.float32) / std, width).astype(np.float32)
  # astype first: it copies any view (a flip) into a contiguous array, so
  # the reshape is free.
  out = pixels.astype(np.float32).reshape(height, width * channels)
  out *= scale
  out += offset
  return out.reshape(height, width, channels)


# ------------------------------------------------------------- transforms --


def train_transform(
  image: bytes | np.ndarray, rng: np.random.Generator, data_config: Any
) -> np.ndarray:
  """Encoded image (or uint8 pixels) -> augmented, normalised float32.

  Args:
    rng: this example's generator (from its seed and global position).
    data_config: reads image_size, channels, random_resized_crop,
      crop_scale, crop_ratio, horizontal_flip, jpeg_reduced_decode, mean,
      std, and the fine-tuning extras randaugment_* and random_erasing.
  """
  size, channels = data_config.image_size, data_config.channels
  height, width = image_size_of(image)
  if data_config.random_resized_crop:
    box = random_resized_crop_box(
      rng, height, width, tuple(data_config.crop_scale), tuple(data_config.crop_ratio)
    )
  else:
    box = (0, 0, height, width)
  window = _decode_box(image, box, size, channels, bool(data_config.jpeg_reduced_decode))
  # Drawn even when flipping is off, so that turning it on or off leaves
  # the later draws (RandAugment, erasing) where they were.
  flip = rng.uniform() < 0.5
  if data_config.horizontal_flip and flip:
    window = window.transpose(Image.FLIP_LEFT_RIGHT)
  pixels = to_array(window)
  if data_config.randaugment_ops:
    pixels = randaugment.rand_augment(
      pixels,
      rng,
      num_ops=data_config.randaugment_ops,
      magnitude=data_config.randaugment_magnitude,
      magnitude_std=data_config.randaugment_magnitude_std,
      fill=tuple(round(255 * m) for m in data_config.mean),
    )
  out = normalize(pixels, data_config.mean, data_config.std)
  if data_config.random_erasing:
    out = randaugment.random_erasing(out, rng, probability=data_config.random_erasing)
  return out


def eval_transform(image: bytes | np.ndarray, data_config: Any) -> np.ndarray:
  """Encoded image (or uint8 pixels) -> resized, centre-cropped, normalised.

  Always decoded at full size: evaluation is the number people compare.
  """
  size = data_config.image_size
  decoded = decode_image(image, data_config.channels)
  height, width = decoded.height, decoded.width
  new_height, new_width = eval_resize_shape(height, width, size, data_config.eval_crop_fraction)
  if (new_height, new_width) != (height, width):
    decoded = resize_box(decoded, (0, 0, height, width), new_height, new_width)
  top = int(round((new_height - size) / 2))
  left = int(round((new_width - size) / 2))
  pixels = to_array(decoded)[top : top + size, left : left + size]
  return normalize(pixels, data_config.mean, data_config.std)
