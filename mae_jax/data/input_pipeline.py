"""The tf.data pipeline: deterministic per-host batches for train and eval.

Batches are dicts of
  "image": float32 [B_local, S, S, C], normalised;
  "label": int32 [B_local] (-1 for datasets without labels);
  "mask":  float32 [B_local], 1 for real examples, 0 for eval padding;
where B_local = global_batch_size // process_count.

Train: this host's shard, shuffled with a seeded buffer (a new order every
epoch, the same orders for the same seed), repeated forever, augmented with
per-example stateless seeds folded from (seed, process, position in the
stream). The stream is thus a pure function of the seed, and
`start_step=k` replays it from batch k (resume).

Eval: one pass in dataset order, the last batch padded (mask 0) so shapes
are static, and every host yields the same number of batches so that
collective eval steps line up across hosts.

Images that fail to decode are dropped (`_decode_or_skip`) rather than
ending the run; image folders have already left them out up front
(`sources._readable_images`), so this only catches what slipped past, e.g.
a corrupt record in a TFDS dataset.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mae_jax.data import augment, digits, sources

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_tf_gpus_hidden = False


def hide_gpus_from_tf() -> None:
  """Keeps TF on the CPU, so it neither grabs nor preallocates GPU memory
  that JAX needs. Called once on import; a no-op once TF has initialised
  its devices (then it is too late to change, and tensorflow-cpu has none)."""
  global _tf_gpus_hidden
  if _tf_gpus_hidden:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # Devices already initialised by someone else.
  _tf_gpus_hidden = True


hide_gpus_from_tf()


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
      # default. A typed placeholder so command-line overrides parse as str.
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="test",
      image_size=32,
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
      shuffle_buffer=10_000,
      prefetch=2,  # batches
      cache=True,  # keep decoded images in memory (small datasets only)
      # Image folders: decode splits of up to this many files once at
      # start-up and leave out unreadable ones; -1 = any size, 0 = never.
      check_images_up_to=sources.CHECK_IMAGES_UP_TO,
    )
  )
  unknown = sorted(set(overrides) - set(config.keys()))
  if unknown:
    raise ValueError(f"unknown data config field(s) {unknown}; known: {sorted(config.keys())}")
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
    cache=False,  # 140 GB of JPEGs do not fit in memory
  )
  settings.update(overrides)
  return default_data_config(**settings)


def make_dataset(
  data_config: Any,
  *,
  split: str,
  global_batch_size: int,
  train: bool,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  start_step: int = 0,
) -> tf.data.Dataset:
  """Returns this host's batches of `split` (see the module docstring).

  Args:
    data_config: see `default_data_config`.
    split: a split name or TFDS sub-split ("train[:99%]"; not for folders).
    global_batch_size: batch size summed over all hosts.
    train: True: augmented, shuffled, infinite; False: one padded pass.
    seed: determines the shuffle and augmentation (unused for eval).
    process_index, process_count: this host and the number of hosts;
      default to `jax.process_index()` / `jax.process_count()`.
    start_step: train only; skip that many batches, so that a resumed run
      continues the uninterrupted data stream. Skipped examples are read
      but not augmented (nor decoded, unless `cache` decodes them once).

  Raises:
    ValueError (`DataConfigError` for config problems) naming the culprit.
  """
  process_index, process_count = _resolve_processes(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if not _is_int(seed):
    raise ValueError(f"seed={seed!r} is invalid: expected an integer")
  if not _is_int(start_step) or start_step < 0:
    raise ValueError(f"start_step={start_step!r} is invalid: expected an integer >= 0")
  if start_step and not train:
    raise ValueError(
      f"start_step={start_step} is invalid for eval "
      "(train=False), which always reads the whole split"
    )
  sources.validate_data_config(data_config, splits=(split,))
  shard = sources.read_host_shard(
    data_config,
    split,
    process_index=process_index,
    process_count=process_count,
    shuffle_files=train,
    seed=seed,
  )
  if train:
    dataset = _train_batches(
      shard,
      data_config,
      local_batch_size,
      seed=seed,
      process_index=process_index,
      start_step=start_step,
    )
  else:
    dataset = _eval_batches(shard, data_config, local_batch_size)
  if data_config.prefetch:
    dataset = dataset.prefetch(data_config.prefetch)
  return dataset.with_options(_options())


def make_iterator(
  data_config: Any,
  *,
  split: str,
  global_batch_size: int,
  train: bool,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """`make_dataset` with the same arguments, as an iterator of numpy dicts.

  Eval iterators are one pass; make a new one for each evaluation.
  """
  dataset = make_dataset(
    data_config,
    split=split,
    global_batch_size=global_batch_size,
    train=train,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    start_step=start_step,
  )
  return iter(tfds.as_numpy(dataset))


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # Imported late: the data tests need no JAX backend.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not _is_int(process_count) or process_count < 1:
    raise ValueError(f"process_count={process_count!r} is invalid: expected an integer >= 1")
  if not _is_int(process_index) or not 0 <= process_index < process_count:
    raise ValueError(
      f"process_index={process_index!r} is invalid: expected "
      f"0 <= process_index < process_count={process_count}"
    )
  return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if not _is_int(global_batch_size) or global_batch_size < 1:
    raise ValueError(
      f"global_batch_size={global_batch_size!r} is invalid: expected an integer >= 1"
    )
  if global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} is invalid: it must be "
      f"divisible by process_count={process_count} (each host loads "
      "global_batch_size // process_count examples)"
    )
  return global_batch_size // process_count


def _decoder(shard: sources.HostShard, data_config: Any):
  """Returns example -> example with uint8 [H, W, channels] pixels."""

  def decode(example):
    image = augment.decode(example["image"], shard.stored_channels)
    image = augment.match_channels(image, data_config.channels)
    return {"image": image, "label": example["label"]}

  return decode


def _decode_or_skip(dataset: tf.data.Dataset, decode) -> tf.data.Dataset:
  """`dataset.map(decode)`, minus the elements whose decode fails.

  A corrupt image makes the decode op raise, which would end the run from
  deep inside tf.data. `ignore_errors` on the whole pipeline would drop it,
  but would also hide the errors of everything upstream (a TFDS file that
  cannot be read), so each element is decoded in a one-element dataset of
  its own and only that may fail. TF logs a warning for each element
  dropped. The cost is a few tens of microseconds per element, small next to
  decoding a photo; the order is kept (deterministic interleave).
  """

  def decode_one(*element):
    return tf.data.Dataset.from_tensors(element).map(decode).ignore_errors(log_warning=True)

  return dataset.interleave(decode_one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _train_batches(
  shard: sources.HostShard,
  data_config: Any,
  local_batch_size: int,
  *,
  seed: int,
  process_index: int,
  start_step: int,
) -> tf.data.Dataset:
  decode = _decoder(shard, data_config)
  dataset = shard.dataset
  if data_config.cache:
    dataset = _decode_or_skip(dataset, decode).cache()
  # Shuffle before repeat: each epoch is a full pass with a fresh order.
  # With a fixed op seed the sequence of per-epoch orders is itself fixed.
  dataset = dataset.shuffle(
    data_config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True
  ).repeat()
  # Skip whole examples before decoding, then number them by their position
  # in the uninterrupted stream so a resumed run reuses the same seeds.
  first_example = start_step * local_batch_size
  dataset = dataset.skip(first_example).enumerate(start=first_example)
  if not data_config.cache:
    # Dropped here, after the positions are drawn, an undecodable image
    # shifts later batches by one example; a run resumed past it then
    # differs from an uninterrupted one by that shift (with `cache`, bad
    # images are dropped before the stream is numbered).
    dataset = _decode_or_skip(dataset, lambda position, example: (position, decode(example)))
  # The process is folded in so that hosts draw different augmentations.
  host_seed = tf.constant([seed, process_index], tf.int64)

  def augment_example(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(host_seed, position)
    return {
      "image": augment.train_transform(example["image"], example_seed, data_config),
      "label": example["label"],
      "mask": tf.constant(1.0, tf.float32),
    }

  dataset = dataset.map(augment_example, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.batch(local_batch_size, drop_remainder=True)


def _eval_batches(
  shard: sources.HostShard, data_config: Any, local_batch_size: int
) -> tf.data.Dataset:
  def preprocess(example):
    return {
      "image": augment.eval_transform(example["image"], data_config),
      "label": example["label"],
      "mask": tf.constant(1.0, tf.float32),
    }

  dataset = _decode_or_skip(shard.dataset, _decoder(shard, data_config))
  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  if data_config.cache:
    dataset = dataset.cache()  # Eval is deterministic: cache the result.
  # Pad every host up to the batch count of the largest shard. Padding
  # without end, then taking exactly that many examples, keeps the count
  # even if some images were dropped as undecodable.
  num_batches = math.ceil(shard.max_examples_per_host / local_batch_size)
  size, channels = data_config.image_size, data_config.channels
  padding = tf.data.Dataset.from_tensors(
    {
      "image": tf.zeros([size, size, channels], tf.float32),
      "label": tf.constant(0, tf.int32),  # A valid class: safe to gather.
      "mask": tf.constant(0.0, tf.float32),
    }
  ).repeat()
  dataset = dataset.concatenate(padding).take(num_batches * local_batch_size)
  return dataset.batch(local_batch_size, drop_remainder=True)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps still yield in order.
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  return options
