"""The bundled default dataset: scikit-learn's 8x8 handwritten digits.

`load_digits` ships 1,797 real 8x8 grayscale scans (values 0..16) inside the
scikit-learn package, so a fresh machine can pretrain with no download and no
data on disk. They are held in memory as uint8 [N, 8, 8, 1] images in 0..255
and go through the same transforms as any photo.

The train/test split is a fixed permutation drawn from numpy's legacy
`RandomState` (whose stream numpy guarantees never to change), so every
machine gets the same splits in the same order.
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "digits"
NUM_EXAMPLES = 1797
NUM_TEST = 300
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
NUM_CLASSES = 10
SPLITS = ("train", "test")
_SPLIT_SEED = 0

# Per-channel statistics of the train split on the 0..1 scale (pixel / 255
# after the 0..16 -> 0..255 rescale below):
#   images, _ = digits.load_split("train"); (images / 255).mean(), .std()
# Digits are mostly black background, hence the low mean.
MEAN = (0.30542,)
STD = (0.37600,)


@functools.cache
def _all_examples() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits

  digits = load_digits()
  # 0..16 grey levels -> 0..255 so the image looks like any other uint8 one.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int32)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (uint8 [N, 8, 8, 1] images, int32 [N] labels) of "train"/"test"."""
  if split not in SPLITS:
    raise KeyError(split)
  images, labels = _all_examples()
  order = np.random.RandomState(_SPLIT_SEED).permutation(NUM_EXAMPLES)
  indices = order[NUM_TEST:] if split == "train" else order[:NUM_TEST]
  return images[indices], labels[indices]
