"""The input benchmarks' photos: natural-looking or synthetic JPEGs of
ImageNet-like size, written once into an image folder (and linked up to a
split's length), and listed back."""

from __future__ import annotations

import io
import os

import numpy as np

# ImageNet-1k's typical photo: about 400 x 350, ~110 KB as JPEG.
JPEG_SHAPE = (375, 500)


# What the JPEGs hold: "natural" crops of scikit-learn's two sample photos
# (a temple, a flower; random 500x375 windows, mirrored at random), or
# "synthetic" blocks of random colour with Gaussian noise (sd 12), whose
# noise makes entropy decoding slower than a photo's.
CONTENTS = ("natural", "synthetic")


def _natural_image(rng: np.random.Generator, shape) -> np.ndarray:
  from sklearn.datasets import load_sample_images

  photo = load_sample_images().images[int(rng.integers(2))]
  height, width = shape
  top = int(rng.integers(photo.shape[0] - height + 1))
  left = int(rng.integers(photo.shape[1] - width + 1))
  window = photo[top : top + height, left : left + width]
  return window[:, ::-1] if rng.uniform() < 0.5 else window


def _synthetic_image(rng: np.random.Generator, shape) -> np.ndarray:
  height, width = shape
  coarse = rng.uniform(0, 255, size=(height // 25 + 1, width // 25 + 1, 3))
  image = np.kron(coarse, np.ones((25, 25, 1)))[:height, :width]
  image = image + rng.normal(0, 12, size=image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def write_jpegs(
  root: str,
  count: int,
  *,
  shape=JPEG_SHAPE,
  seed: int = 0,
  quality: int = 90,
  content: str = "natural",
  records: int = 0,
) -> str:
  """root/train/<class>/*.jpg: `count` JPEGs of `shape` with `content` (see
  CONTENTS), then links to them up to `records` entries in all.

  The links make the split as long as a real one for Grain's global
  shuffle, whose cost per example falls with the split's length (measured,
  one core: 112 us at 256 examples, 65 at 512, 12 at 4,096, 5 at 65,536,
  4.7 at ImageNet's 1,281,167): a 512-image folder would charge the
  pipeline 13 times what ImageNet costs.
  """
  from PIL import Image

  if content not in CONTENTS:
    raise ValueError(f"content={content!r}: expected one of {CONTENTS}")
  make = _natural_image if content == "natural" else _synthetic_image
  rng = np.random.default_rng(seed)
  for index in range(count):
    folder = os.path.join(root, "train", f"class_{index % 4}")
    os.makedirs(folder, exist_ok=True)
    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(make(rng, shape))).save(
      encoded, format="JPEG", quality=quality
    )
    with open(os.path.join(folder, f"{index:06d}.jpg"), "wb") as f:
      f.write(encoded.getvalue())
  for index in range(count, records):
    folder = os.path.join(root, "train", f"class_{index % 4}")
    os.symlink(
      os.path.join(root, "train", f"class_{index % count % 4}", f"{index % count:06d}.jpg"),
      os.path.join(folder, f"{index:06d}.jpg"),
    )
  return root


def jpeg_files(root: str) -> list[str]:
  """The distinct JPEGs under root/train (not the links to them)."""
  return sorted(
    os.path.join(folder, name)
    for folder, _, names in os.walk(os.path.join(root, "train"))
    for name in names
    if not os.path.islink(os.path.join(folder, name))
  )
