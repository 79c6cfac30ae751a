"""Per-example image transforms in numpy and Pillow (run in Grain workers).

Training follows the reference MAE recipe: torchvision's RandomResizedCrop
(scale 0.2-1 of the area, log-uniform width/height ratio 3/4-4/3, ten draws
then a centre-crop fallback, bicubic), a random horizontal flip; mean/std
normalisation happens on the device. Evaluation resizes the short side to image_size /
crop_fraction and takes the centre crop. The crop is the reference's own
operation (torchvision's `F.resized_crop` on a PIL image): `crop(box)`, then
Pillow's bicubic resize of the crop, antialiasing included.

JPEG crops go through the native crop decoder when it is built
(`crop_resize`: only the box's window is decoded, then Pillow's resize
arithmetic; the same pixels, twice the rate). Otherwise, and for
other formats, images are decoded in full: JPEGs by libjpeg-turbo (through
`simplejpeg`) straight to RGB with its accurate integer IDCT and smooth
chroma upsampling, the same pixels as Pillow's decoder, which the reference
runs (docs/data.md has the measurements, and why the reduced-DCT-scale and
fast-IDCT modes that were here before are gone).

All randomness comes from the `numpy.random.Generator` the pipeline passes
in, seeded from (seed, global example position): the same seed gives the
same images in any process, worker or host count, and after a restart.

Images in: encoded JPEG/PNG bytes, or uint8 [H, W, C] arrays (digits).
Images out: uint8 [height, width, channels] (`image_size` an int: square;
or (height, width)); the jitted steps normalise them
on the device (`mae_jax.core.pixels`).
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import simplejpeg
from PIL import Image

from mae_jax.data import crop_resize, randaugment
from mae_jax.image_size import image_hw

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


def _is_cmyk_jpeg(encoded: bytes) -> bool:
  """CMYK and YCCK JPEGs: libjpeg-turbo's conversion to RGB differs from
  Pillow's (by a level, measured), so Pillow decodes them."""
  try:
    return simplejpeg.decode_jpeg_header(encoded)[2] in ("CMYK", "YCCK")
  except ValueError:
    return False  # Not a readable header: the decoders below say why.


def is_jpeg_bytes(image: bytes | np.ndarray) -> bool:
  return isinstance(image, bytes) and _is_jpeg(image)


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


def decode_image(image: bytes | np.ndarray, channels: int) -> Image.Image:
  """Encoded bytes (or uint8 pixels) -> a Pillow image ("L" or "RGB").

  JPEGs go through libjpeg-turbo (accurate IDCT, smooth upsampling: the
  pixels Pillow's own decoder gives); CMYK JPEGs (whose RGB would differ)
  and other formats go through Pillow. Corrupt or truncated files raise
  `UndecodableImage` (strict: a "premature end" is an error, not a
  half-grey image).
  """
  mode = "L" if channels == 1 else "RGB"
  if isinstance(image, np.ndarray):
    pixels = match_channels(image, channels)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  if _is_jpeg(image) and not _is_cmyk_jpeg(image):
    try:
      pixels = simplejpeg.decode_jpeg(
        image,
        colorspace="GRAY" if channels == 1 else "RGB",
        fastdct=False,
        fastupsample=False,
        strict=True,
      )
      return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    except ValueError:
      pass  # Pillow decides: CMYK decodes there, a corrupt file fails there too.
  try:
    with Image.open(io.BytesIO(image)) as opened:
      return opened.convert(mode)
  except Exception as error:  # Each decoder has its own error types.
    raise UndecodableImage(f"{type(error).__name__}: {error}") from error


def to_array(image: Image.Image) -> np.ndarray:
  """A Pillow "L" or "RGB" image -> uint8 [H, W, 1 or 3]."""
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


def eval_resize_shape(height: int, width: int, size, crop_fraction: float) -> tuple[int, int]:
  """The reference eval's Resize(int(size / crop_pct)) of the short side,
  for a square `size`. For a (height, width) size, timm's rule for
  non-square inputs (transforms_imagenet_eval): resize to exactly
  (int(h / crop_pct), int(w / crop_pct)), the image's aspect not kept, then
  the centre crop."""
  # The epsilon absorbs float error (224 / 0.875 must be 256, not 255).
  if isinstance(size, (tuple, list)):
    return tuple(max(n, int(n / crop_fraction + 1e-6)) for n in image_hw(size))
  short = max(size, int(size / crop_fraction + 1e-6))
  if height > width:
    return int(short * height / width), short
  return short, int(short * width / height)


# ----------------------------------------------------------------- resize --


def crop_then_resize(image: Image.Image, box: Box, height: int, width: int) -> Image.Image:
  """The reference's `F.resized_crop` on a PIL image: `crop(box)` with
  box = (top, left, h, w), then Pillow's bicubic (antialiased) resize of
  the crop, whose filter sees only the crop's pixels. Not `resize(box=...)`,
  whose taps read the image around the box."""
  top, left, box_height, box_width = box
  cropped = image.crop((left, top, left + box_width, top + box_height))
  return cropped.resize((width, height), Image.BICUBIC)


def crop_and_resize(
  image: bytes | np.ndarray,
  channels: int,
  box: Box,
  shape: tuple[int, int],
  flip: bool = False,
  out: np.ndarray | None = None,
) -> np.ndarray:
  """The crop `box` of the image resized to `shape` = (height, width)
  (`crop_then_resize`), mirrored if `flip`, uint8 [h, w, channels]
  (written into `out` when given): JPEGs through the native crop decoder
  when it is built (only the box's window is decoded, the same pixels),
  everything else (or a file it refuses) decoded in full."""
  if is_jpeg_bytes(image):
    pixels = crop_resize.crop_resize(image, channels, box, shape, flip=flip, out=out)
    if pixels is not None:
      return pixels
  window = crop_then_resize(decode_image(image, channels), box, *shape)
  pixels = to_array(window.transpose(Image.FLIP_LEFT_RIGHT) if flip else window)
  if out is None:
    return pixels
  out[...] = pixels
  return out


# ------------------------------------------------------------- transforms --


def train_transform(
  image: bytes | np.ndarray,
  rng: np.random.Generator,
  data_config: Any,
  out: np.ndarray | None = None,
) -> np.ndarray:
  """Encoded image (or uint8 pixels) -> augmented uint8 [size, size, C],
  written into `out` when given (the batch's slot for it).

  Random erasing, the reference's last step, fills its box with noise in
  the normalised space, so only its box is drawn on the host
  (`randaugment.random_erasing_box`, by the pipeline after this) and the
  fine-tuning step erases on the device.

  Args:
    rng: this example's generator (from its seed and global position).
    data_config: reads image_size, channels, random_resized_crop,
      crop_scale, crop_ratio, horizontal_flip, mean (RandAugment's fill)
      and the fine-tuning extras randaugment_*.
  """
  out_hw, channels = image_hw(data_config.image_size), data_config.channels
  height, width = image_size_of(image)
  if data_config.random_resized_crop:
    box = random_resized_crop_box(
      rng, height, width, tuple(data_config.crop_scale), tuple(data_config.crop_ratio)
    )
  else:
    box = (0, 0, height, width)
  # Drawn even when flipping is off, so that turning it on or off leaves
  # the later draws (RandAugment, the erasing box) where they were.
  flip = rng.uniform() < 0.5
  flip = bool(data_config.horizontal_flip and flip)
  augment = bool(data_config.randaugment_ops)
  pixels = crop_and_resize(image, channels, box, out_hw, flip=flip, out=None if augment else out)
  if augment:
    pixels = randaugment.rand_augment(
      pixels,
      rng,
      num_ops=data_config.randaugment_ops,
      magnitude=data_config.randaugment_magnitude,
      magnitude_std=data_config.randaugment_magnitude_std,
      fill=tuple(round(255 * m) for m in data_config.mean),
    )
    if out is not None:
      out[...] = pixels
      return out
  return pixels


def eval_transform(image: bytes | np.ndarray, data_config: Any) -> np.ndarray:
  """Encoded image (or uint8 pixels) -> resized, centre-cropped uint8."""
  (out_h, out_w), channels = image_hw(data_config.image_size), data_config.channels
  height, width = image_size_of(image)
  new_height, new_width = eval_resize_shape(
    height, width, data_config.image_size, data_config.eval_crop_fraction
  )
  top = int(round((new_height - out_h) / 2))
  left = int(round((new_width - out_w) / 2))
  if (new_height, new_width) != (height, width) and is_jpeg_bytes(image):
    # The native decoder computes only the centre crop of the resize.
    pixels = crop_resize.crop_resize(
      image, channels, (0, 0, height, width), (new_height, new_width), (top, left, out_h, out_w)
    )
    if pixels is not None:
      return pixels
  decoded = decode_image(image, channels)
  if (new_height, new_width) != (height, width):
    decoded = decoded.resize((new_width, new_height), Image.BICUBIC)
  return to_array(decoded)[top : top + out_h, left : left + out_w]
