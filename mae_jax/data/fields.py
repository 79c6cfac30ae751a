"""The data config's fields, each checked on its own before any file is touched."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from mae_jax.errors import UserError

SOURCES = ("digits", "tfds", "image_folder")

# Every field the pipeline reads; `config.default_data_config` sets them
# all. A config missing one is rejected rather than silently defaulted:
# e.g. a missing `mean` has no value that is right for every dataset.
REQUIRED_FIELDS = (
  "source",
  "name",
  "data_dir",
  "train_split",
  "eval_split",
  "image_size",
  "channels",
  "mean",
  "std",
  "random_resized_crop",
  "crop_scale",
  "crop_ratio",
  "horizontal_flip",
  "randaugment_ops",
  "randaugment_magnitude",
  "randaugment_magnitude_std",
  "random_erasing",
  "eval_crop_fraction",
  "num_workers",
  "read_threads",
  "prefetch",
)


class DataConfigError(UserError):
  """A data config (or a dataset it points at) that cannot be used."""


def _invalid(field: str, value: Any, allowed: str) -> DataConfigError:
  return DataConfigError(f"data.{field}={value!r} is invalid: {allowed}.")


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
  """An integer (Python or numpy), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number_pair(config: Any, field: str) -> tuple[float, float]:
  value = getattr(config, field)
  if (
    isinstance(value, (str, bytes))
    or not hasattr(value, "__len__")
    or len(value) != 2
    or not all(_is_number(v) for v in value)
  ):
    raise _invalid(field, value, "expected two numbers (low, high)")
  return float(value[0]), float(value[1])


def check_fields(config: Any) -> None:
  """Checks every field on its own, before any file is touched."""
  missing = [f for f in REQUIRED_FIELDS if not hasattr(config, f)]
  if missing:
    raise DataConfigError(
      f"data config is missing field(s) {missing}; start from "
      "mae_jax.data.default_data_config(...) which sets them all."
    )
  if config.source not in SOURCES:
    raise _invalid("source", config.source, f"expected one of {SOURCES}")
  if config.data_dir is not None and not isinstance(config.data_dir, str):
    raise _invalid("data_dir", config.data_dir, "expected a path string or None")
  for field in ("train_split", "eval_split"):
    value = getattr(config, field)
    if not isinstance(value, str) or not value:
      raise _invalid(field, value, "expected a non-empty split name")
  size = config.image_size
  sides = tuple(size) if isinstance(size, (tuple, list)) else (size,)
  if len(sides) not in (1, 2) or not all(is_int(n) and n > 0 for n in sides):
    raise _invalid("image_size", size, "expected an integer > 0, or (height, width)")
  if config.channels not in (1, 3) or isinstance(config.channels, bool):
    raise _invalid("channels", config.channels, "expected 1 (grayscale) or 3 (RGB)")
  for field in ("mean", "std"):
    value = getattr(config, field)
    if (
      isinstance(value, (str, bytes))
      or not hasattr(value, "__len__")
      or not all(_is_number(v) for v in value)
      or len(value) != config.channels
    ):
      raise _invalid(
        field,
        value,
        f"expected {config.channels} numbers, one per channel (data.channels={config.channels})",
      )
  if not all(s > 0 for s in config.std):
    raise _invalid("std", config.std, "every std must be > 0")
  low, high = _number_pair(config, "crop_scale")
  if not 0 < low <= high <= 1:
    raise _invalid(
      "crop_scale", config.crop_scale, "expected 0 < low <= high <= 1 (fractions of the image area)"
    )
  low, high = _number_pair(config, "crop_ratio")
  if not 0 < low <= high:
    raise _invalid("crop_ratio", config.crop_ratio, "expected 0 < low <= high (width / height)")
  for field in ("random_resized_crop", "horizontal_flip"):
    if not isinstance(getattr(config, field), (bool, np.bool_)):
      raise _invalid(field, getattr(config, field), "expected True or False")
  if not is_int(config.randaugment_ops) or not 0 <= config.randaugment_ops <= 15:
    raise _invalid(
      "randaugment_ops",
      config.randaugment_ops,
      "expected an integer in 0..15 (0 = off; the reference uses 2)",
    )
  if not _is_number(config.randaugment_magnitude) or not 0 <= config.randaugment_magnitude <= 10:
    raise _invalid(
      "randaugment_magnitude",
      config.randaugment_magnitude,
      "expected a number in [0, 10] (the reference uses 9)",
    )
  if not _is_number(config.randaugment_magnitude_std) or config.randaugment_magnitude_std < 0:
    raise _invalid(
      "randaugment_magnitude_std",
      config.randaugment_magnitude_std,
      "expected a number >= 0 (the reference uses 0.5)",
    )
  if not _is_number(config.random_erasing) or not 0 <= config.random_erasing <= 1:
    raise _invalid(
      "random_erasing",
      config.random_erasing,
      "expected a probability in [0, 1] (the reference uses 0.25)",
    )
  fraction = config.eval_crop_fraction
  if not _is_number(fraction) or not 0 < fraction <= 1:
    raise _invalid("eval_crop_fraction", fraction, "expected 0 < fraction <= 1")
  if not is_int(config.num_workers) or config.num_workers < 0:
    raise _invalid(
      "num_workers",
      config.num_workers,
      "expected an integer >= 0 (Grain worker processes; 0 = threads in this process)",
    )
  if not is_int(config.read_threads) or config.read_threads < 1:
    raise _invalid(
      "read_threads", config.read_threads, "expected an integer >= 1 (threads per process)"
    )
  if not is_int(config.prefetch) or config.prefetch < 1:
    raise _invalid("prefetch", config.prefetch, "expected an integer >= 1 (batches buffered)")
  if config.source == "tfds" and (not isinstance(config.name, str) or not config.name):
    raise _invalid(
      "name", config.name, 'source="tfds" needs a TFDS dataset name, e.g. "imagenet2012"'
    )
  if config.source == "image_folder" and not config.data_dir:
    raise _invalid(
      "data_dir",
      config.data_dir,
      'source="image_folder" needs the folder root (root/<split>/<class>/*.jpg)',
    )
