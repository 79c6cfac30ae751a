"""The data settings (`config.data` of every job) and their presets."""

from __future__ import annotations

from typing import Any

import ml_collections

from mae_jax.data import digits
from mae_jax.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The data settings, defaulting to the bundled digits at 32x32.

  Args:
    **overrides: fields to change; unknown names raise a ValueError (typos).
  """
  config = ml_collections.ConfigDict(
    dict(
      source="digits",  # "digits" | "tfds" | "image_folder"
      name="",  # TFDS name, for source="tfds"
      # TFDS data_dir (local or gs://) or image-folder root; None = TFDS
      # default (digits: must stay None). A typed placeholder so
      # command-line overrides parse as str.
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="test",
      # An int (square) or (height, width); object-typed so that either
      # overrides it (--config.data.image_size=224 or =(224,320)).
      image_size=ml_collections.config_dict.FieldReference(32, field_type=object),
      channels=1,
      mean=digits.MEAN,  # per channel, on the 0..1 pixel scale
      std=digits.STD,
      random_resized_crop=True,  # False: plain resize to image_size
      crop_scale=(0.2, 1.0),  # fraction of the image area
      crop_ratio=(3 / 4, 4 / 3),  # width / height
      horizontal_flip=False,  # digits must not be mirrored
      # Fine-tuning augmentations (randaugment.py), off by default; the
      # reference fine-tuning recipe: 2 ops, magnitude 9, std 0.5, erasing 0.25.
      randaugment_ops=0,  # operations per image; 0 = no RandAugment
      randaugment_magnitude=9.0,  # out of 10
      randaugment_magnitude_std=0.5,
      random_erasing=0.0,  # probability of erasing one rectangle
      eval_crop_fraction=1.0,  # eval: resize short side to size / fraction
      # Loading: Grain worker processes per host (0 = threads in the
      # training process), threads per process, batches buffered per
      # process. BENCHMARKS.md has the measured rates to size them.
      num_workers=0,
      read_threads=4,
      prefetch=4,
    )
  )
  unknown = sorted(set(overrides) - set(config.keys()))
  if unknown:
    raise ConfigError(f"unknown data config field(s) {unknown}; known: {sorted(config.keys())}")
  if "image_size" in overrides:
    config.image_size = overrides.pop("image_size")
  config.update(overrides)
  return config


def imagenet_data_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The reference MAE ImageNet-1k setup, read from a prepared TFDS copy."""
  settings = dict(
    source="tfds",
    name="imagenet2012",
    image_size=224,
    channels=3,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    horizontal_flip=True,
    eval_split="validation",
    eval_crop_fraction=0.875,  # 224 / 256
    # JPEG decoding is the host's main cost: one worker process per core
    # that the accelerator step leaves free (docs/data.md).
    num_workers=8,
  )
  settings.update(overrides)
  return default_data_config(**settings)
