"""A small real TFDS dataset for the tests: the bundled digits as a TFDS
builder, written as TFRecord or ArrayRecord (building needs TensorFlow,
which the test requirements include; the pipeline itself does not)."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mae_jax.data import digits

NAME = "mae_digits"


class MaeDigits(tfds.core.GeneratorBasedBuilder):
  """The digits splits, in `digits.load_split` order, as 8x8x1 PNGs."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="scikit-learn's digits (tests only).",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      disable_shuffling=True,  # Keep the split order of `digits.load_split`.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in digits.SPLITS}

  def _generate_examples(self, split):
    images, labels = digits.load_split(split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": np.asarray(image), "label": int(label)}


def build(data_dir: str, file_format: str) -> str:
  """Builds the dataset into data_dir; returns its version directory."""
  builder = MaeDigits(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare()
  return str(builder.data_dir)
