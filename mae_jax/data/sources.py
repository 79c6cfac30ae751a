"""Where images come from, and the checks that run before anything is read.

`data_config.source` picks one of:
  "digits"        the bundled 8x8 digits (`digits.py`), in memory;
  "tfds"          any prepared TFDS image dataset, `data_config.name`, from
                  `data_config.data_dir` (local or gs://), read through
                  `tfds.data_source` (ArrayRecord, random access); never
                  downloads. A TFRecord-only copy is refused with the
                  command that converts it (`convert.py`);
  "image_folder"  `data_dir/<split>/<class>/*.jpg|jpeg|png`, listed once.

Each split opens as `Records`: a picklable random-access sequence of
(image, label) pairs, images still encoded (or uint8 arrays for the digits),
so the pipeline (`input_pipeline.py`) reads exactly the examples it needs,
in any order, from any Grain worker. Every problem we can detect up front
raises `DataConfigError` naming the field, the value and what would be
accepted. Images that turn out not to decode later are replaced in the
stream (see `input_pipeline`), not refused here.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from typing import Any, Iterable, Sequence

import numpy as np
from absl import logging
from etils import epath

from mae_jax.data import digits, transforms
from mae_jax.errors import UserError

SOURCES = ("digits", "tfds", "image_folder")

# Image-folder files with these endings (any case) are images; anything
# else in a class folder (READMEs, .DS_Store) is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# How many examples of each split `validate_data_config` decodes, to refuse
# a split that holds no images at all before anything compiles.
PROBE_EXAMPLES = 8

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


# ---------------------------------------------------------------- records --


class ArrayRecords:
  """In-memory uint8 images and their labels (the digits)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, where: str):
    self.images, self.labels, self.where = images, labels, where

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def describe(self, index: int) -> str:
    return f"{self.where} example {index}"


class FileRecords:
  """Image files (local or gs://) and their labels; reads bytes on demand."""

  def __init__(self, paths: Sequence[str], labels: Sequence[int], where: str):
    self.paths, self.labels, self.where = list(paths), np.asarray(labels, np.int32), where

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    path = self.paths[index]
    try:
      if "://" in path:
        content = epath.Path(path).read_bytes()
      else:  # Local files: the builtin open costs half of epath's 30 us.
        with open(path, "rb") as file:
          content = file.read()
    except OSError as error:
      # A file removed or unreadable since listing: replaced like a bad image.
      raise transforms.UndecodableImage(f"cannot read {path}: {error}") from error
    return content, int(self.labels[index])

  def describe(self, index: int) -> str:
    return self.paths[index]


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


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, opened for random access.

  Attributes:
    records: `records[i]` is (encoded image bytes or uint8 [H, W, C], label);
      label -1 for datasets without labels. Picklable (Grain workers).
    num_classes: None for datasets without a class label.
  """

  records: Any
  num_classes: int | None

  @property
  def num_examples(self) -> int:
    return len(self.records)


# ------------------------------------------------------------- public API --


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


# ---------------------------------------------------------------- sources --


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
    return _open_image_folder(data_dir, split, field)
  return _open_tfds(name, data_dir, split, field)


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


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _access_hint(path: str | None) -> str:
  if path and path.startswith("gs://"):
    return (
      "Check the bucket and path spelling, that this machine can reach "
      "Cloud Storage, and that its credentials may read the bucket "
      "(`gcloud auth application-default login`, or the VM service "
      "account's storage role); `gcloud storage ls PATH` shows what "
      "this machine sees."
    )
  return "Check the spelling, and that this user may read the directory."


def _list_dir(path: str, what: str) -> list[epath.Path]:
  """The entries of `path`, or a `DataConfigError` naming it."""
  try:
    directory = epath.Path(path)
    if not directory.is_dir():
      reason = "does not exist, is not a directory, or cannot be reached"
      raise DataConfigError(
        f"data.data_dir={path!r} {reason}; expected {what}. {_access_hint(path)}"
      )
    return sorted(directory.iterdir())
  except OSError as error:
    raise DataConfigError(
      f"data.data_dir={path!r} cannot be read ({_first_line(error)}); expected {what}. "
      f"{_access_hint(path)}"
    ) from error


# Image folders: root -> ({split: (paths, labels)}, class names).
@functools.lru_cache(maxsize=8)
def _list_image_folder(root: str) -> tuple[dict[str, tuple[list[str], list[int]]], list[str]]:
  """Lists root/<split>/<class>/<image> once (per process and root).

  Classes are the sorted union of the class folders of all splits, so a
  class gets the same label in every split. Files directly in a split
  folder, non-image files, and folders below the class folders are ignored
  (the layout is exactly root/split/class/image). Every host lists the same
  sorted files, so all agree on the examples and their order.
  """
  layout = "an image folder root/<split>/<class>/*.jpg|jpeg|png"
  split_dirs = [entry for entry in _list_dir(root, layout) if entry.is_dir()]
  class_dirs = {
    split.name: [c for c in sorted(split.iterdir()) if c.is_dir()] for split in split_dirs
  }
  classes = sorted({c.name for dirs in class_dirs.values() for c in dirs})
  label_of = {name: label for label, name in enumerate(classes)}
  splits = {}
  for split, dirs in class_dirs.items():
    paths, labels = [], []
    for class_dir in dirs:
      files = _image_files(class_dir)
      paths += files
      labels += [label_of[class_dir.name]] * len(files)
    splits[split] = (paths, labels)
  return splits, classes


def _image_files(class_dir: epath.Path) -> list[str]:
  """The sorted image files of one class folder."""
  folder = os.fspath(class_dir)
  if "://" in folder:
    files = sorted(class_dir.iterdir())
    return [os.fspath(f) for f in files if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()]
  # Local: os.scandir lists ImageNet's 1.28M files in seconds; epath's
  # Path objects take 27 us each (measured), half a minute per process.
  with os.scandir(folder) as entries:
    names = sorted(
      entry.name
      for entry in entries
      if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and not entry.is_dir()
    )
  return [os.path.join(folder, name) for name in names]


def _open_image_folder(root: str, split: str, field: str) -> Split:
  try:
    splits, classes = _list_image_folder(root)
  except OSError as error:  # An unreadable sub-folder.
    raise DataConfigError(
      f"data.data_dir={root!r}: cannot list its class folders ({_first_line(error)}). "
      f"{_access_hint(root)}"
    ) from error
  if split not in splits:
    raise DataConfigError(
      f"{field} is invalid: image folder {root!r} has split folders {sorted(splits)} "
      f"with class sub-folders of images; expected {root}/{split}/<class>/*.jpg|jpeg|png "
      "(image folders take whole splits, no 'train[:10%]' expressions)."
    )
  paths, labels = splits[split]
  if not paths:
    raise DataConfigError(
      f"{field} is invalid: it has no examples in {root}/{split} "
      "(expected <class>/*.jpg|jpeg|png files)."
    )
  where = f"image folder {os.path.join(root, split)!r}"
  return Split(FileRecords(paths, labels, where), len(classes))


def convert_command(dataset_dir: str) -> str:
  """The command that adds ArrayRecord files to a TFRecord TFDS copy."""
  return f"python -m mae_jax.data.convert {dataset_dir}"


@functools.lru_cache(maxsize=8)
def _tfds_builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds  # Imported late: digits runs need none of it.

  where = data_dir if data_dir else "the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  if data_dir:
    _list_dir(data_dir, "a TFDS data directory (holding <name>/<version>/)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as error:  # Includes tfds' DatasetNotFoundError.
    raise DataConfigError(
      f"data.name={name!r}: no such TFDS dataset in code or in "
      f"data.data_dir={where} ({_first_line(error)}). Check the name (e.g. "
      '"imagenet2012", "cifar10", "mnist:3.0.1") and data.data_dir.'
    ) from error
  except (RuntimeError, OSError) as error:
    # TFDS wraps file system errors into a RuntimeError.
    raise DataConfigError(
      f"data.name={name!r}: cannot read its metadata from "
      f"data.data_dir={where} ({_first_line(error)}). {_access_hint(data_dir)}"
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


def _tfds_num_classes(builder) -> int | None:
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


def _open_tfds(name: str, data_dir: str | None, split: str, field: str) -> Split:
  import tensorflow_datasets as tfds

  builder = _tfds_builder(name, data_dir)
  num_classes = _tfds_num_classes(builder)
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
      f"({_first_line(error)}). {_access_hint(data_dir)}"
    ) from error
  where = f"TFDS {builder.name} {split}"
  logging.info("Opened %s: %d examples (ArrayRecord).", where, len(data_source))
  return Split(TfdsRecords(data_source, num_classes is not None, where), num_classes)


def _all_splits(config: Any) -> tuple[dict[str, int], int | None]:
  """{split: num_examples} of every split the dataset has, and num_classes."""
  if config.source == "digits":
    open_split(config, "train")  # Refuses a data_dir, as every digits split does.
    return {"train": digits.NUM_TRAIN, "test": digits.NUM_TEST}, digits.NUM_CLASSES
  if config.source == "image_folder":
    splits, classes = _list_image_folder(config.data_dir)
    return {split: len(paths) for split, (paths, _) in splits.items()}, len(classes)
  builder = _tfds_builder(config.name, config.data_dir)
  num_classes = _tfds_num_classes(builder)
  return {name: info.num_examples for name, info in builder.info.splits.items()}, num_classes


def _split_field(config: Any, split: str) -> str:
  """How to name `split` in errors: by its config field when it is one."""
  for field in ("train_split", "eval_split"):
    if getattr(config, field, None) == split:
      return f"data.{field}={split!r}"
  return f"split={split!r}"


# ----------------------------------------------------------------- fields --


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
  if not is_int(config.image_size) or config.image_size <= 0:
    raise _invalid("image_size", config.image_size, "expected an integer > 0")
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
