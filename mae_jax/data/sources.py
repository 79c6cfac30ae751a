"""Where images come from, and the checks that run before anything is read.

`data_config.source` picks one of:
  "digits"        the bundled 8x8 digits (`digits.py`), in memory;
  "tfds"          any prepared TFDS image dataset, `data_config.name`, from
                  `data_config.data_dir` (local or gs://) (`tfds_splits.py`);
  "image_folder"  `data_dir/<split>/<class>/*.jpg|jpeg|png` (`image_folders.py`).

Each split opens as records (`records.py`), read by the pipeline
(`input_pipeline.py`) in any order. Every problem we can detect up front
raises `DataConfigError` naming the field, the value and what would be
accepted. Images that turn out not to decode later are replaced in the
stream (see `input_pipeline`), not refused here.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

from mae_jax.data import digits, transforms
from mae_jax.data.fields import SOURCES, DataConfigError, check_fields, is_int
from mae_jax.data.image_folders import list_image_folder, open_image_folder
from mae_jax.data.records import ArrayRecords, Split
from mae_jax.data.tfds_splits import open_tfds, tfds_builder, tfds_num_classes

__all__ = ["SOURCES", "DataConfigError", "dataset_info", "is_int", "open_split"]

# How many examples of each split `validate_data_config` decodes, to refuse
# a split that holds no images at all before anything compiles.
PROBE_EXAMPLES = 8


def validate_data_config(data_config: Any, splits: Iterable[str] | None = None) -> None:
  """Raises `DataConfigError` unless the config can be read as asked.

  Checks the fields, then opens each split (metadata and listings only)
  and decodes its first few examples, so that a split holding no readable
  image is refused before anything compiles.

  Args:
    data_config: a `ConfigDict` (or any object with the attributes of
      `config.default_data_config()`).
    splits: the splits that will be read; defaults to the config's
      `train_split` and `eval_split`.
  """
  check_fields(data_config)
  if splits is None:
    splits = (data_config.train_split, data_config.eval_split)
  for split in splits:
    _probe(open_split(data_config, split), data_config, split)


def dataset_info(data_config: Any) -> tuple[dict[str, int], int | None]:
  """Returns ({split: num_examples}, num_classes) of the configured dataset.

  The dict has every split of the dataset, plus the configured train/eval
  splits when they are sub-split expressions such as "train[:99%]".
  `num_classes` is None for datasets without a `label` class feature.
  """
  check_fields(data_config)
  sizes, num_classes = _all_splits(data_config)
  for split in (data_config.train_split, data_config.eval_split):
    if split not in sizes:
      try:
        sizes[split] = open_split(data_config, split).num_examples
      except DataConfigError:
        pass  # An eval split may legitimately be absent when not evaluating.
  return sizes, num_classes


def open_split(data_config: Any, split: str) -> Split:
  """Opens `split` for random access (cached per process and dataset)."""
  return _open_split(
    data_config.source,
    data_config.name,
    data_config.data_dir,
    split,
    _split_field(data_config, split),
  )


@functools.lru_cache(maxsize=16)
def _open_split(source: str, name: str, data_dir: str | None, split: str, field: str) -> Split:
  if source == "digits":
    if data_dir:
      raise DataConfigError(
        f"data.data_dir={data_dir!r} is invalid for data.source='digits': the bundled "
        "digits are held in memory and read no directory. Leave data.data_dir unset, or "
        "set data.source='tfds' or 'image_folder' to read from it."
      )
    try:
      images, labels = digits.load_split(split)
    except KeyError:
      raise DataConfigError(
        f"{field} is invalid: the bundled digits have splits {list(digits.SPLITS)}."
      ) from None
    return Split(ArrayRecords(images, labels, f"digits {split}"), digits.NUM_CLASSES)
  if source == "image_folder":
    return open_image_folder(data_dir, split, field)
  return open_tfds(name, data_dir, split, field)


def _probe(split: Split, config: Any, split_name: str) -> None:
  """Decodes the first few examples; raises if none of them is an image."""
  count = min(PROBE_EXAMPLES, split.num_examples)
  failures = []
  for index in range(count):
    try:
      image, _ = split.records[index]
      transforms.decode(image, config.channels)
      return
    except transforms.UndecodableImage as error:
      failures.append((split.records.describe(index), error))
  where, why = failures[0]
  raise DataConfigError(
    f"{_split_field(config, split_name)} is invalid: none of the first {count} files can "
    f"be read as an image (first: {where}: {why}). Expected JPEG or PNG images."
  )


def _all_splits(config: Any) -> tuple[dict[str, int], int | None]:
  """{split: num_examples} of every split the dataset has, and num_classes."""
  if config.source == "digits":
    open_split(config, "train")  # Refuses a data_dir, as every digits split does.
    return {"train": digits.NUM_TRAIN, "test": digits.NUM_TEST}, digits.NUM_CLASSES
  if config.source == "image_folder":
    splits, classes = list_image_folder(config.data_dir)
    return {split: len(paths) for split, (paths, _) in splits.items()}, len(classes)
  builder = tfds_builder(config.name, config.data_dir)
  num_classes = tfds_num_classes(builder)
  return {name: info.num_examples for name, info in builder.info.splits.items()}, num_classes


def _split_field(config: Any, split: str) -> str:
  """How to name `split` in errors: by its config field when it is one."""
  for field in ("train_split", "eval_split"):
    if getattr(config, field, None) == split:
      return f"data.{field}={split!r}"
  return f"split={split!r}"
