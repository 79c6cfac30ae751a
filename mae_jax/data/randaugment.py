"""RandAugment and random erasing, the fine-tuning augmentations (Pillow).

The reference fine-tuning recipe uses timm's `rand-m9-mstd0.5-inc1`: per
image, 2 distinct operations out of the 15 below, each applied with
probability 0.5, at magnitude ~ N(9, 0.5) clipped to [0, 10] (out of 10),
with the "increasing" variants (a higher magnitude always means a stronger
change). After normalisation, random erasing replaces one rectangle (2-33 %
of the area, aspect ratio 0.3-3.3) with N(0, 1) noise per pixel, with
probability 0.25.

Written from the published definitions of the operations, on Pillow's
ImageOps / ImageEnhance / affine transforms, as the reference runs them.
Geometric operations interpolate bicubically and fill uncovered pixels with
the dataset mean. All randomness is drawn from the example's generator, so
the stream is reproducible and resumable.

Images are uint8 [H, W, C] with C = 1 or 3.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
APPLY_PROBABILITY = 0.5  # each chosen operation, as timm's RandAugment
_ERASE_ATTEMPTS = 10

# An operation: (image, magnitude in [0, 10], sign in {-1, +1}, fill) -> image.
Operation = Callable[[Image.Image, float, float, tuple], Image.Image]


def _enhance_factor(magnitude: float, sign: float) -> float:
  # The "increasing" enhance ops: factor 1 +- 0.9 * magnitude / 10.
  return 1.0 + sign * magnitude / MAX_MAGNITUDE * 0.9


def auto_contrast(image, magnitude, sign, fill):
  return ImageOps.autocontrast(image)


def equalize(image, magnitude, sign, fill):
  return ImageOps.equalize(image)


def invert(image, magnitude, sign, fill):
  return ImageOps.invert(image)


def posterize(image, magnitude, sign, fill):
  bits = 4 - int(magnitude / MAX_MAGNITUDE * 4)  # keep 4..0 bits
  if bits <= 0:
    # Keeping 0 bits masks every value to 0 (what the reference's Pillow
    # did); Pillow >= 10 refuses bits=0 instead, and the magnitude reaches
    # the maximum whenever its noise is clipped there.
    return Image.new(image.mode, image.size, 0)
  return ImageOps.posterize(image, bits)


def solarize(image, magnitude, sign, fill):
  return ImageOps.solarize(image, 256 - int(magnitude / MAX_MAGNITUDE * 256))


def solarize_add(image, magnitude, sign, fill):
  added = int(magnitude / MAX_MAGNITUDE * 110)
  lut = [min(255, value + added) if value < 128 else value for value in range(256)]
  return image.point(lut * len(image.getbands()))


def color(image, magnitude, sign, fill):
  return ImageEnhance.Color(image).enhance(_enhance_factor(magnitude, sign))


def contrast(image, magnitude, sign, fill):
  return ImageEnhance.Contrast(image).enhance(_enhance_factor(magnitude, sign))


def brightness(image, magnitude, sign, fill):
  return ImageEnhance.Brightness(image).enhance(_enhance_factor(magnitude, sign))


def sharpness(image, magnitude, sign, fill):
  return ImageEnhance.Sharpness(image).enhance(_enhance_factor(magnitude, sign))


def _affine(image: Image.Image, coefficients, fill) -> Image.Image:
  """Output pixel (x, y) reads input (a x + b y + c, d x + e y + f)."""
  return image.transform(
    image.size, Image.AFFINE, coefficients, resample=Image.BICUBIC, fillcolor=fill
  )


def rotate(image, magnitude, sign, fill):
  return image.rotate(sign * magnitude / MAX_MAGNITUDE * 30.0, Image.BICUBIC, fillcolor=fill)


def shear_x(image, magnitude, sign, fill):
  return _affine(image, (1, sign * magnitude / MAX_MAGNITUDE * 0.3, 0, 0, 1, 0), fill)


def shear_y(image, magnitude, sign, fill):
  return _affine(image, (1, 0, 0, sign * magnitude / MAX_MAGNITUDE * 0.3, 1, 0), fill)


def translate_x(image, magnitude, sign, fill):
  pixels = sign * magnitude / MAX_MAGNITUDE * 0.45 * image.size[0]
  return _affine(image, (1, 0, pixels, 0, 1, 0), fill)


def translate_y(image, magnitude, sign, fill):
  pixels = sign * magnitude / MAX_MAGNITUDE * 0.45 * image.size[1]
  return _affine(image, (1, 0, 0, 0, 1, pixels), fill)


# timm's _RAND_INCREASING_TRANSFORMS, in its order.
OPERATIONS: tuple[Operation, ...] = (
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
  pixels: np.ndarray,
  rng: np.random.Generator,
  *,
  num_ops: int,
  magnitude: float,
  magnitude_std: float,
  fill: Sequence[int],
) -> np.ndarray:
  """`num_ops` distinct random operations, each applied with probability 0.5.

  Args:
    pixels: uint8 [H, W, C].
    rng: the example's generator.
    magnitude, magnitude_std: per operation, the magnitude is drawn from
      N(magnitude, magnitude_std) and clipped to [0, 10] (std 0: fixed).
    fill: per-channel pixel value for areas that geometric operations
      uncover; the reference uses the dataset mean.
  """
  grey = pixels.shape[-1] == 1
  image = Image.fromarray(pixels[..., 0] if grey else pixels)
  fill_value = int(fill[0]) if grey else tuple(int(f) for f in fill)
  # Without replacement, as timm.
  chosen = rng.choice(len(OPERATIONS), size=num_ops, replace=False)
  for index in chosen:
    apply_draw, sign_draw, noise = rng.uniform(), rng.uniform(), rng.standard_normal()
    if apply_draw >= APPLY_PROBABILITY:
      continue
    level = float(np.clip(magnitude + magnitude_std * noise, 0.0, MAX_MAGNITUDE))
    sign = -1.0 if sign_draw < 0.5 else 1.0
    image = OPERATIONS[index](image, level, sign, fill_value)
  out = np.asarray(image)
  return out[..., None] if grey else out


def random_erasing_box(
  rng: np.random.Generator,
  height: int,
  width: int,
  *,
  probability: float,
  area: tuple[float, float] = (0.02, 1 / 3),
  log_ratio: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
) -> np.ndarray:
  """The rectangle of timm's RandomErasing(mode="pixel", count 1).

  With `probability`, the first of 10 (area, aspect ratio) draws that fits
  strictly inside the image: int32 (top, left, height, width); all zeros
  when nothing is erased. The reference fills it with N(0, 1) noise per
  pixel of the normalised image; here the fine-tuning step does that on
  the device (`mae_jax.evaluate.erasing`), since images travel as uint8.
  The draws are the reference's, in its order, so the boxes are too.
  """
  none = np.zeros(4, np.int32)
  if rng.uniform() >= probability:
    return none
  for _ in range(_ERASE_ATTEMPTS):
    target = height * width * rng.uniform(*area)
    ratio = math.exp(rng.uniform(*log_ratio))
    erase_height = int(round(math.sqrt(target * ratio)))
    erase_width = int(round(math.sqrt(target / ratio)))
    if erase_height < height and erase_width < width:
      top = int(rng.integers(0, height - erase_height + 1))
      left = int(rng.integers(0, width - erase_width + 1))
      return np.array([top, left, erase_height, erase_width], np.int32)
  return none
