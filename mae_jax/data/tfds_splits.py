"""Prepared TFDS datasets, read through `tfds.data_source` (ArrayRecord, random
access); nothing is downloaded. A TFRecord-only copy is refused with the
command that converts it (`mae_jax.data.convert`)."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
from absl import logging

from mae_jax.data.fields import DataConfigError
from mae_jax.data.records import Split, access_hint, first_line, list_dir


class TfdsRecords:
  """A `tfds.data_source` split; images come back encoded (SkipDecoding)."""

  def __init__(self, data_source: Any, has_label: bool, where: str):
    self.data_source, self.has_label, self.where = data_source, has_label, where

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> tuple[bytes | np.ndarray, int]:
    example = self.data_source[index]
    return example["image"], int(example["label"]) if self.has_label else -1

  def describe(self, index: int) -> str:
    return f"{self.where} example {index}"


def convert_command(dataset_dir: str) -> str:
  """The command that adds ArrayRecord files to a TFRecord TFDS copy."""
  return f"python -m mae_jax.data.convert {dataset_dir}"


@functools.lru_cache(maxsize=8)
def tfds_builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # Imported late: digits runs need none of it.

  where = data_dir if data_dir else "the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  if data_dir:
    list_dir(data_dir, "a TFDS data directory (holding <name>/<version>/)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as error:  # Includes tfds' DatasetNotFoundError.
    raise DataConfigError(
      f"data.name={name!r}: no such TFDS dataset in code or in "
      f"data.data_dir={where} ({first_line(error)}). Check the name (e.g. "
      '"imagenet2012", "cifar10", "mnist:3.0.1") and data.data_dir.'
    ) from error
  except (RuntimeError, OSError) as error:
    # TFDS wraps file system errors into a RuntimeError.
    raise DataConfigError(
      f"data.name={name!r}: cannot read its metadata from "
      f"data.data_dir={where} ({first_line(error)}). {access_hint(data_dir)}"
    ) from error
  if not builder.is_prepared():
    raise DataConfigError(
      f"data.name={name!r}: TFDS dataset is not prepared in "
      f"data.data_dir={where} (looked for {builder.data_dir}). Nothing is "
      f"downloaded during training: build it once with `tfds build {name} "
      "--data_dir=<dir> --file_format=array_record` (needs the optional "
      "requirements-tfds.txt; ImageNet needs its archives in "
      "<dir>/downloads/manual), or point data.data_dir at the directory or "
      "gs:// bucket that already holds it."
    )
  # Re-opened from its files: a builder class registered in code would
  # describe the formats its code writes, not those on disk.
  builder = tfds.builder_from_directory(builder.data_dir)
  formats = {builder.info.file_format, *builder.info.alternative_file_formats}
  if not any(getattr(f, "value", f) == "array_record" for f in formats):
    raise DataConfigError(
      f"data.name={name!r}: the copy in {builder.data_dir} is stored as "
      f"{sorted(getattr(f, 'value', str(f)) for f in formats)} only; random access "
      "(exact, instant resume) needs ArrayRecord files. Add them once, beside the "
      f"existing files, with `{convert_command(os.fspath(builder.data_dir))}` "
      "(needs the optional requirements-tfds.txt; resumable if interrupted)."
    )
  return builder


def tfds_num_classes(builder) -> int | None:
  """Checks for an image feature of uint8 HxWxC; returns num_classes or None."""
  import tensorflow_datasets as tfds

  features = builder.info.features
  feature = features["image"] if "image" in features else None
  shape = getattr(feature, "shape", None)
  if feature is None or shape is None or len(shape) != 3 or np.dtype(feature.np_dtype) != np.uint8:
    raise DataConfigError(
      f"data.name={builder.name!r} is invalid: the dataset needs an 'image' feature of "
      f"uint8 (height, width, channels) images; it has features {features}"
    )
  label = features["label"] if "label" in features else None
  return label.num_classes if isinstance(label, tfds.features.ClassLabel) else None


def open_tfds(name: str, data_dir: str | None, split: str, field: str) -> Split:
  import tensorflow_datasets as tfds

  builder = tfds_builder(name, data_dir)
  num_classes = tfds_num_classes(builder)
  available = sorted(builder.info.splits.keys())
  try:
    count = builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as error:
    raise DataConfigError(
      f"{field} is invalid: dataset {builder.name!r} in {builder.data_dir} has splits "
      f"{available} (sub-splits such as 'train[:99%]' are allowed). Error: {error}"
    ) from error
  if count == 0:
    raise DataConfigError(f"{field} is invalid: it has no examples in {builder.data_dir}.")
  try:
    data_source = builder.as_data_source(
      split=split, decoders={"image": tfds.decode.SkipDecoding()}
    )
  except (NotImplementedError, OSError, ValueError) as error:
    raise DataConfigError(
      f"data.name={name!r}: cannot open {field} for random access in {builder.data_dir} "
      f"({first_line(error)}). {access_hint(data_dir)}"
    ) from error
  where = f"TFDS {builder.name} {split}"
  logging.info("Opened %s: %d examples (ArrayRecord).", where, len(data_source))
  return Split(TfdsRecords(data_source, num_classes is not None, where), num_classes)
