"""Where images come from, and the checks that run before anything is read.

`data_config.source` picks one of:
  "digits"        the bundled 8x8 digits (`digits.py`), built on first use;
  "tfds"          any prepared TFDS image dataset, `data_config.name`, from
                  `data_config.data_dir` (local or gs://); never downloads;
  "image_folder"  `data_dir/<split>/<class>/*.jpg|jpeg|png` through
                  `tfds.folder_dataset.ImageFolder`.

All three are opened as TFDS builders; images stay encoded (`SkipDecoding`
for TFDS) until the pipeline decodes them, so examples that a resumed run
skips are never decoded. Image folders are checked once per process: files
that do not decode are left out and counted in the log (see
`_readable_images`). Every problem we can detect up front raises
`DataConfigError` (a `ValueError`) naming the field, the value and what would
be accepted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import numbers
import os
import re
from typing import Any, Iterable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from mae_jax.data import augment, digits
from mae_jax.errors import UserError

SOURCES = ("digits", "tfds", "image_folder")

# Image-folder splits with at most this many files are decoded once at
# start-up, leaving out unreadable files (data.check_images_up_to; -1 = any
# size, 0 = never).
CHECK_IMAGES_UP_TO = 50_000

# Every field the pipeline reads; `input_pipeline.default_data_config` sets
# them all. A config missing one is rejected rather than silently defaulted:
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
  "shuffle_buffer",
  "prefetch",
  "cache",
)


class DataConfigError(UserError):
  """A data config (or a dataset it points at) that cannot be used."""


@dataclasses.dataclass(frozen=True)
class HostShard:
  """This host's part of one split, as read from disk.

  Attributes:
    dataset: elements {"image": encoded bytes (or uint8 HxWxC), "label":
      int32; -1 for datasets without labels}.
    num_examples: examples in `dataset`.
    max_examples_per_host: the largest shard any host gets. Eval pads every
      host to the same number of batches from it, so that hosts run the same
      number of (collective) eval steps.
    stored_channels: channels of the stored images (None: unknown, decoded
      as RGB).
  """

  dataset: tf.data.Dataset
  num_examples: int
  max_examples_per_host: int
  stored_channels: int | None


def validate_data_config(data_config: Any, splits: Iterable[str] | None = None) -> None:
  """Raises `DataConfigError` unless the config can be read as asked.

  Checks the fields, then opens the dataset's metadata (building the small
  digits set if needed) to check that the dataset and splits exist. Image
  folders are also decoded once, to leave out unreadable files (cached for
  the process; see `_readable_images`).

  Args:
    data_config: a `ConfigDict` (or any object with the attributes of
      `input_pipeline.default_data_config()`).
    splits: the splits that will be read; defaults to the config's
      `train_split` and `eval_split`.
  """
  _check_fields(data_config)
  if splits is None:
    splits = (data_config.train_split, data_config.eval_split)
  builder = _open_builder(data_config)
  for split in splits:
    _num_examples(builder, data_config, split)
  _stored_channels(builder, data_config)


def dataset_info(data_config: Any) -> tuple[dict[str, int], int | None]:
  """Returns ({split: num_examples}, num_classes) of the configured dataset.

  The dict has every split of the dataset, plus the configured train/eval
  splits when they are sub-split expressions such as "train[:99%]". For
  image folders the configured splits count their readable files only.
  `num_classes` is None for datasets without a `label` class feature.
  """
  _check_fields(data_config)
  builder = _open_builder(data_config)
  sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
  for split in (data_config.train_split, data_config.eval_split):
    if data_config.source == "image_folder" and split in sizes:
      sizes[split] = _num_examples(builder, data_config, split)
    elif split not in sizes:
      try:
        sizes[split] = _num_examples(builder, data_config, split)
      except DataConfigError:
        pass  # An eval split may legitimately be absent when not evaluating.
  return sizes, _num_classes(builder)


def read_host_shard(
  data_config: Any,
  split: str,
  *,
  process_index: int,
  process_count: int,
  shuffle_files: bool,
  seed: int,
) -> HostShard:
  """Reads this host's disjoint part of `split` (images still encoded).

  Hosts get contiguous, near-equal parts (sizes differ by at most one), via
  `tfds.split_for_jax_process`; image folders, which do not support TFDS
  sub-splits, take every `process_count`-th readable file instead.

  Args:
    shuffle_files: shuffle the order of the TFDS files (training), seeded
      by `seed` so that the order is reproducible.
  """
  builder = _open_builder(data_config)
  total = _num_examples(builder, data_config, split)
  stored_channels = _stored_channels(builder, data_config)
  decoders = {"image": tfds.decode.SkipDecoding()}
  if data_config.source == "image_folder":
    # Every host checks the whole split (`_readable_images`, cached), so all
    # hosts agree on the readable files and their count without talking to
    # each other; each then reads only its own files. We list the files
    # ourselves rather than through `ImageFolder.as_dataset`, which reads
    # every file of the split on every host and shuffles without a seed.
    paths, labels = _readable_images(builder, data_config, split)
    paths, labels = (paths[process_index::process_count], labels[process_index::process_count])
    num_examples = len(paths)
    dataset = tf.data.Dataset.from_tensor_slices(
      {
        "image": tf.constant(paths, tf.string),
        "label": tf.constant(labels, tf.int64),
      }
    ).map(
      lambda example: {**example, "image": tf.io.read_file(example["image"])},
      num_parallel_calls=tf.data.AUTOTUNE,
    )
  else:
    host_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
    )
    num_examples = builder.info.splits[host_split].num_examples
    read_config = tfds.ReadConfig(
      shuffle_seed=seed,
      shuffle_reshuffle_each_iteration=True,
      # We cache (or not) ourselves, after decoding; see input_pipeline.
      try_autocache=False,
      skip_prefetch=True,
    )
    # Ordered datasets (digits) refuse file shuffling; the example shuffle
    # in the pipeline still applies.
    shuffle_files = shuffle_files and not builder.info.disable_shuffling
    dataset = builder.as_dataset(
      split=host_split, shuffle_files=shuffle_files, decoders=decoders, read_config=read_config
    )
  has_label = _num_classes(builder) is not None

  def keep_image_and_label(example):
    label = example["label"] if has_label else tf.constant(-1)
    return {"image": example["image"], "label": tf.cast(label, tf.int32)}

  return HostShard(
    dataset=dataset.map(keep_image_and_label),
    num_examples=num_examples,
    max_examples_per_host=math.ceil(total / process_count),
    stored_channels=stored_channels,
  )


# ----------------------------------------------------------------- fields --


def _invalid(field: str, value: Any, allowed: str) -> DataConfigError:
  return DataConfigError(f"data.{field}={value!r} is invalid: {allowed}.")


def _is_number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
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


def _check_fields(config: Any) -> None:
  """Checks every field on its own, before any file is touched."""
  missing = [f for f in REQUIRED_FIELDS if not hasattr(config, f)]
  if missing:
    raise DataConfigError(
      f"data config is missing field(s) {missing}; start from "
      "input_pipeline.default_data_config(...) which sets them all."
    )
  if config.source not in SOURCES:
    raise _invalid("source", config.source, f"expected one of {SOURCES}")
  if config.data_dir is not None and not isinstance(config.data_dir, str):
    raise _invalid("data_dir", config.data_dir, "expected a path string or None")
  for field in ("train_split", "eval_split"):
    value = getattr(config, field)
    if not isinstance(value, str) or not value:
      raise _invalid(field, value, "expected a non-empty split name")
  if not _is_int(config.image_size) or config.image_size <= 0:
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
  check = getattr(config, "check_images_up_to", CHECK_IMAGES_UP_TO)
  if not _is_int(check) or check < -1:
    raise _invalid(
      "check_images_up_to", check, "expected a number of files >= 0, or -1 for any number"
    )
  for field in ("random_resized_crop", "horizontal_flip", "cache"):
    if not isinstance(getattr(config, field), (bool, np.bool_)):
      raise _invalid(field, getattr(config, field), "expected True or False")
  if not _is_int(config.randaugment_ops) or not 0 <= config.randaugment_ops <= 15:
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
  if not _is_int(config.shuffle_buffer) or config.shuffle_buffer < 1:
    raise _invalid("shuffle_buffer", config.shuffle_buffer, "expected an integer >= 1")
  if not _is_int(config.prefetch) or config.prefetch < 0:
    raise _invalid(
      "prefetch", config.prefetch, "expected an integer >= 0 (batches to prefetch; 0 = none)"
    )
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


# ---------------------------------------------------------------- sources --


def _open_builder(config: Any) -> tfds.core.DatasetBuilder:
  """Opens the dataset's builder (metadata only) or explains what is missing."""
  if config.source == "digits":
    try:
      return digits.load_builder(config.data_dir)
    except (OSError, tf.errors.OpError) as error:
      raise DataConfigError(
        f"data.data_dir={config.data_dir!r}: cannot build or read the "
        f"bundled digits there ({_first_line(error)}). "
        f"{_access_hint(config.data_dir)}"
      ) from error
  if config.source == "image_folder":
    return _open_image_folder(config.data_dir)
  return _open_tfds(config.name, config.data_dir)


def _first_line(error: BaseException) -> str:
  """The gist of an error, without TF's "{{function_node ...}}" and "[Op:...]"."""
  text = re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:\w+\]$", "", str(error).strip())
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


def _check_readable_dir(path: str, what: str) -> None:
  """Raises a `DataConfigError` naming `path` unless it can be listed.

  Wraps tf.io.gfile's errors (e.g. a gs:// bucket that does not exist or
  that these credentials may not read) so that they surface here, before
  anything compiles, rather than from deep inside TFDS or tf.data.
  """
  try:
    tf.io.gfile.listdir(path)
    return
  except tf.errors.NotFoundError as error:
    # Also what gfile reports for a gs:// path it cannot reach at all.
    cause, reason = error, "does not exist, is not a directory, or cannot be reached"
  except (tf.errors.OpError, OSError) as error:
    cause, reason = error, f"cannot be read ({_first_line(error)})"
  raise DataConfigError(
    f"data.data_dir={path!r} {reason}; expected {what}. {_access_hint(path)}"
  ) from cause


def _open_tfds(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  where = data_dir if data_dir else "the TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  if data_dir:
    _check_readable_dir(data_dir, "a TFDS data directory (holding <name>/<version>/)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as error:  # Includes tfds' DatasetNotFoundError.
    raise DataConfigError(
      f"data.name={name!r}: no such TFDS dataset in code or in "
      f"data.data_dir={where} ({_first_line(error)}). Check the name (e.g. "
      '"imagenet2012", "cifar10", "mnist:3.0.1") and data.data_dir.'
    ) from error
  except (RuntimeError, OSError, tf.errors.OpError) as error:
    # TFDS wraps file system errors into a RuntimeError.
    raise DataConfigError(
      f"data.name={name!r}: cannot read its metadata from "
      f"data.data_dir={where} ({_first_line(error)}). "
      f"{_access_hint(data_dir)}"
    ) from error
  if not builder.is_prepared():
    raise DataConfigError(
      f"data.name={name!r}: TFDS dataset is not prepared in "
      f"data.data_dir={where} (looked for {builder.data_dir}). Nothing is "
      f"downloaded during training: build it once with `tfds build {name} "
      "--data_dir=<dir>` (ImageNet needs its archives in "
      "<dir>/downloads/manual), or point data.data_dir at the directory or "
      "gs:// bucket that already holds it."
    )
  return builder


def _open_image_folder(root: str) -> tfds.core.DatasetBuilder:
  layout = "an image folder root/<split>/<class>/*.jpg|jpeg|png"
  _check_readable_dir(root, layout)
  try:
    return tfds.folder_dataset.ImageFolder(root)
  except (OSError, tf.errors.OpError) as error:  # An unreadable sub-folder.
    raise DataConfigError(
      f"data.data_dir={root!r}: cannot list {layout} ({_first_line(error)}). {_access_hint(root)}"
    ) from error


# Image-folder checks done in this process: (root, split, channels, paths)
# -> (readable paths, their labels).
_readable_cache: dict[tuple, tuple[list[str], list[int]]] = {}


def _readable_images(
  builder: tfds.core.DatasetBuilder, config: Any, split: str
) -> tuple[list[str], list[int]]:
  """The files of an image-folder split that decode, and their labels.

  Folders are hand-made, so a corrupt, truncated or non-image file is
  likely, and a failed decode inside tf.data would end the run. So we
  decode every file once, here, with the pipeline's own decoder (what
  decodes here decodes there), leave out the ones that fail, and log how
  many. This runs from `validate_data_config`, i.e. before anything
  compiles, and is cached for the process, so the per-example path pays
  nothing. Every host checks the whole split so that all agree on the same
  file list; that is one decode pass per host, fine for the small data sets
  that folders are for (prepare large ones with `tfds build`).
  """
  # ImageFolder's own listing (a private attribute), in its fixed order.
  examples = builder._split_examples[split]
  paths = [example.image_path for example in examples]
  channels = _stored_channels(builder, config)
  key = (config.data_dir, split, channels, tuple(paths))
  if key in _readable_cache:
    return _readable_cache[key]
  label_feature = builder.info.features["label"]
  limit = getattr(config, "check_images_up_to", CHECK_IMAGES_UP_TO)
  if limit >= 0 and len(paths) > limit:
    # An ImageNet-sized folder: a decode pass per host would cost minutes to
    # hours. The stream still drops what does not decode (with a warning).
    logging.info(
      "Image folder %r: not decoding its %d files up front (more than "
      "data.check_images_up_to=%d); undecodable files are dropped in the "
      "stream, with a warning each.",
      os.path.join(config.data_dir, split),
      len(paths),
      limit,
    )
    result = (paths, [label_feature.str2int(example.label) for example in examples])
    _readable_cache[key] = result
    return result

  def failure(path: str) -> str | None:
    try:
      augment.decode(tf.io.read_file(path), channels)
      return None
    except (tf.errors.OpError, OSError) as error:
      return _first_line(error)

  logging.info(
    "Checking that the %d files of image folder %r decode (once per process).",
    len(paths),
    os.path.join(config.data_dir, split),
  )
  # Eager TF ops release the GIL, so threads decode in parallel.
  with concurrent.futures.ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
    failures = list(pool.map(failure, paths))
  bad = [(path, why) for path, why in zip(paths, failures) if why is not None]
  where = f"image folder {os.path.join(config.data_dir, split)!r}"
  if bad and len(bad) == len(paths):
    raise DataConfigError(
      f"{_split_field(config, split)} is invalid: none of the {len(paths)} "
      f"files in {where} can be read as an image (first: {bad[0][0]}: "
      f"{bad[0][1]}). Expected JPEG or PNG files."
    )
  if bad:
    logging.warning(
      "%s: skipped %d of %d files: unreadable as images (first: %s: %s).",
      where,
      len(bad),
      len(paths),
      *bad[0],
    )
  result = (
    [path for path, why in zip(paths, failures) if why is None],
    [
      label_feature.str2int(example.label)
      for example, why in zip(examples, failures)
      if why is None
    ],
  )
  _readable_cache[key] = result
  return result


def _split_field(config: Any, split: str) -> str:
  """How to name `split` in errors: by its config field when it is one."""
  for field in ("train_split", "eval_split"):
    if getattr(config, field) == split:
      return f"data.{field}={split!r}"
  return f"split={split!r}"


def _num_examples(builder: tfds.core.DatasetBuilder, config: Any, split: str) -> int:
  """Examples in `split`, or a `DataConfigError` if it is missing or empty."""
  available = sorted(builder.info.splits.keys())
  label = _split_field(config, split)
  if config.source == "image_folder":
    # ImageFolder only reads whole splits, no "train[:10%]" expressions.
    if split not in available:
      raise DataConfigError(
        f"{label} is invalid: image folder {config.data_dir!r} has split "
        f"folders {available} with class sub-folders of images; expected "
        f"{config.data_dir}/{split}/<class>/*.jpg|jpeg|png."
      )
    count = builder.info.splits[split].num_examples
    if count:
      count = len(_readable_images(builder, config, split)[0])
  else:
    try:
      count = builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as error:
      raise DataConfigError(
        f"{label} is invalid: dataset {builder.name!r} in "
        f"{builder.data_dir} has splits {available} (sub-splits such as "
        f"'train[:99%]' are allowed). Error: {error}"
      ) from error
  if count == 0:
    raise DataConfigError(f"{label} is invalid: it has no examples in {builder.data_dir}.")
  return count


def _stored_channels(builder: tfds.core.DatasetBuilder, config: Any) -> int | None:
  """Channels of the stored images; raises unless there are uint8 images."""
  features = builder.info.features
  feature = features["image"] if "image" in features else None
  shape = getattr(feature, "shape", None)
  if feature is None or shape is None or len(shape) != 3 or np.dtype(feature.np_dtype) != np.uint8:
    field = "name" if config.source == "tfds" else "source"
    raise _invalid(
      field,
      getattr(config, field),
      f"dataset {builder.name!r} needs an 'image' feature of uint8 "
      f"(height, width, channels) images; it has features {features}",
    )
  return shape[-1]


def _num_classes(builder: tfds.core.DatasetBuilder) -> int | None:
  label = builder.info.features["label"] if "label" in builder.info.features else None
  return label.num_classes if isinstance(label, tfds.features.ClassLabel) else None
