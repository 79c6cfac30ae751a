"""The bundled default dataset: scikit-learn's 8x8 handwritten digits as TFDS.

`load_digits` ships 1,797 real 8x8 grayscale scans (values 0..16) inside the
scikit-learn package, so a fresh machine can pretrain with no download and no
data on disk. We wrap them in a regular TFDS builder (`mae_digits`) so the
input pipeline reads them exactly like any other TFDS dataset (ImageNet
included): same decoding, sharding, and split syntax.

The train/test split is a fixed permutation drawn from numpy's legacy
`RandomState` (whose stream numpy guarantees never to change), and examples
are written in that order (`disable_shuffling`), so every machine gets the
same splits in the same order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds

NAME = "mae_digits"
NUM_EXAMPLES = 1797
NUM_TEST = 300
NUM_TRAIN = NUM_EXAMPLES - NUM_TEST
_SPLIT_SEED = 0

# Per-channel statistics of the train split on the 0..1 scale (pixel / 255
# after the 0..16 -> 0..255 rescale below). Computed once with
#   x = np.stack([e["image"] for e in tfds.as_numpy(
#       digits.load_builder(tmp).as_dataset(split="train"))]) / 255.
#   x.mean(), x.std()
# Digits are mostly black background, hence the low mean.
MEAN = (0.30542,)
STD = (0.37600,)


class MaeDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's `load_digits`, as 8x8x1 uint8 images in 0..255."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Fixed seeded split: 1,497 train / 300 test."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "The UCI optical handwritten digits (8x8, 16 grey levels) as "
        "bundled with scikit-learn, rescaled to 0..255."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
      # Keep generator order: the split order is then fixed by our
      # permutation alone, not by TFDS's key hashing.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    order = np.random.RandomState(_SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {
      "train": self._generate_examples(order[NUM_TEST:]),
      "test": self._generate_examples(order[:NUM_TEST]),
    }

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # Only needed while building.

    digits = load_digits()
    # 0..16 grey levels -> 0..255 so the image looks like any other uint8 one.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for position, index in enumerate(indices):
      # Keys are positions so that the written order is the permutation order.
      yield (
        position,
        {
          "image": images[index][..., None],
          "label": int(digits.target[index]),
        },
      )


def load_builder(data_dir: str | None = None) -> MaeDigits:
  """Returns the prepared digits builder, building it on first use.

  Args:
    data_dir: TFDS data directory; None means the TFDS default
      (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
  """
  builder = MaeDigits(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  with _build_lock(os.fspath(builder.data_dir_root)):
    # Another process may have finished the build while we waited.
    builder = MaeDigits(data_dir=data_dir)
    if not builder.is_prepared():
      try:
        builder.download_and_prepare()
      except OSError:
        # Without a lock (gs://) two builders can race; TFDS writes into a
        # private temp dir and renames it, so the loser fails on the rename
        # and the winner's copy is complete.
        if not MaeDigits(data_dir=data_dir).is_prepared():
          raise
  # Re-open so `info` is read from the files that were just written.
  return MaeDigits(data_dir=data_dir)


@contextlib.contextmanager
def _build_lock(data_dir_root: str):
  """An exclusive file lock next to the dataset, so concurrent builds wait."""
  if "://" in data_dir_root:  # Remote file systems have no flock.
    yield
    return
  os.makedirs(data_dir_root, exist_ok=True)
  with open(os.path.join(data_dir_root, f".{NAME}.lock"), "w") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)
