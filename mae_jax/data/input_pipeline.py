"""The Grain pipeline: one global, random-access data order for train and eval.

Batches are dicts of numpy arrays
  "image":    uint8 [B_local, S, S, C], the pixels: the jitted steps
              normalise them on the device (`mae_jax.core.pixels`);
  "label":    int32 [B_local] (-1 for datasets without labels);
  "mask":     float32 [B_local], 1 for real examples, 0 for eval padding;
  "replaced": int32 [B_local], 1 where the image at that position did not
              decode and a later one of the split took its place (train) or
              the example was masked out (eval);
where B_local = global_batch_size // process_count.

Train. Global example position q (0, 1, 2, ...) holds example
`order[q]`, where `order` is Grain's global per-epoch permutation of the
split (a new permutation each epoch, epochs chained), seeded by `seed`.
Global batch s is positions [s * B, (s + 1) * B); host p loads only its
slice [s * B + p * B_local, s * B + (p + 1) * B_local). Each example's
augmentation draws from a generator seeded with (seed, q). So every batch
is a pure function of (seed, s): it does not depend on the number of hosts,
devices, Grain workers or threads, and `start_step=k` starts at batch k by
index arithmetic, reading nothing before it (O(1) resume, elastic resume on
another host count).

Why the step is all the iterator state a checkpoint needs: nothing in the
stream depends on what was read before. An image that does not decode is
replaced by the next one of the split that does (`_load`), a function of
its index alone, so a resumed run meets the same replacements; the count
of replacements is per batch ("replaced"), summed by the training loop per
logging interval, not carried across batches.

Eval: one pass in split order; global batch s is examples [s * B, (s+1) * B),
host p again loads its slice; positions past the end are padding (mask 0),
so every host runs the same number of (collective) eval steps.
"""

from __future__ import annotations

import math
import types
from typing import Any, Iterator

import grain
import numpy as np
from absl import flags, logging

from mae_jax.data import randaugment, sources, transforms

# An image that does not decode is replaced by the next one of the split;
# this many consecutive failures mean the data, not one file, is broken.
MAX_CONSECUTIVE_UNDECODABLE = 64


class UnreadableData(RuntimeError):
  """Raised when many consecutive examples of a split do not decode."""


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
) -> grain.IterDataset:
  """Returns this host's batches of `split` (see the module docstring).

  Args:
    data_config: see `mae_jax.data.default_data_config`.
    split: a split name or TFDS sub-split ("train[:99%]"; not for folders).
    global_batch_size: batch size summed over all hosts.
    train: True: augmented, shuffled, infinite; False: one padded pass.
    seed: determines the order and the augmentation (unused for eval).
    process_index, process_count: this host and the number of hosts;
      default to `jax.process_index()` / `jax.process_count()`.
    start_step: train only; the first batch to yield (resume).

  Raises:
    ValueError (`DataConfigError` for config problems) naming the culprit.
  """
  process_index, process_count = _resolve_processes(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  if not sources.is_int(seed):
    raise sources.DataConfigError(f"seed={seed!r} is invalid: expected an integer")
  if not sources.is_int(start_step) or start_step < 0:
    raise sources.DataConfigError(f"start_step={start_step!r} is invalid: expected an integer >= 0")
  if start_step and not train:
    raise sources.DataConfigError(
      f"start_step={start_step} is invalid for eval "
      "(train=False), which always reads the whole split"
    )
  sources.validate_data_config(data_config, splits=(split,))
  records = sources.open_split(data_config, split).records
  # A plain, picklable copy of the settings for Grain's worker processes.
  settings = types.SimpleNamespace(**data_config.to_dict())
  if train:
    order = grain.MapDataset.range(len(records)).shuffle(seed=_order_seed(seed)).repeat()
    examples = order.map_with_index(_TrainExample(records, settings, seed))
    # Chunk c of B_local positions; global batch s on host p is chunk
    # s * P + p.
    chunks = examples.batch(local_batch_size, drop_remainder=True)
    host_batches = chunks[start_step * process_count + process_index :: process_count]
  else:
    num_batches = math.ceil(len(records) / global_batch_size)
    positions = grain.MapDataset.range(num_batches * global_batch_size)
    examples = positions.map(_EvalExample(records, settings))
    chunks = examples.batch(local_batch_size, drop_remainder=True)
    host_batches = chunks[process_index::process_count]
  # Each element is a whole batch, so threads and workers change how fast
  # batches come, never what is in them.
  dataset = host_batches.to_iter_dataset(
    grain.ReadOptions(
      num_threads=data_config.read_threads,
      prefetch_buffer_size=max(data_config.prefetch, data_config.read_threads),
    )
  )
  if data_config.num_workers:
    # Grain's workers read its absl flags; outside an absl app (tests,
    # notebooks) nothing has parsed them, so their defaults stand.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=data_config.num_workers, per_worker_buffer_size=data_config.prefetch
      )
    )
  return dataset


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
  return iter(
    make_dataset(
      data_config,
      split=split,
      global_batch_size=global_batch_size,
      train=train,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      start_step=start_step,
    )
  )


# ---------------------------------------------------------------- examples --


def _order_seed(seed: int) -> int:
  """A well-mixed 32-bit seed for the order. Grain seeds epoch e with
  seed + e, so raw seeds s and s + 1 would share all but one epoch."""
  return int(np.random.SeedSequence([int(seed) % 2**63, 0x4D4145]).generate_state(1)[0])


def _load(records: Any, index: int, decode) -> tuple[Any, int, int]:
  """(decode(image), label, replaced) of `records[index]`, or of the next
  example that decodes (cyclically) if it does not; replaced is 0 or 1."""
  for attempt in range(MAX_CONSECUTIVE_UNDECODABLE):
    candidate = (index + attempt) % len(records)
    try:
      image, label = records[candidate]
      return decode(image), label, int(attempt > 0)
    except transforms.UndecodableImage as error:
      logging.warning("Replacing %s: it does not decode (%s).", records.describe(candidate), error)
  raise UnreadableData(
    f"{MAX_CONSECUTIVE_UNDECODABLE} consecutive examples starting at "
    f"{records.describe(index)} do not decode as images; check the dataset."
  )


class _TrainExample:
  """(position, index) -> one augmented example; picklable for workers."""

  def __init__(self, records: Any, settings: Any, seed: int):
    self.records, self.settings, self.seed = records, settings, int(seed)

  def __call__(self, position: int, index: int) -> dict[str, Any]:
    rng = np.random.default_rng([self.seed % 2**63, position])
    image, label, replaced = _load(
      self.records, int(index), lambda raw: transforms.train_transform(raw, rng, self.settings)
    )
    example = {
      "image": image,
      "label": np.int32(label),
      "mask": np.float32(1.0),
      "replaced": np.int32(replaced),
    }
    if self.settings.random_erasing:
      # The reference's last augmentation, so its draws come last.
      size = self.settings.image_size
      example["erase_box"] = randaugment.random_erasing_box(
        rng, size, size, probability=self.settings.random_erasing
      )
    return example


class _EvalExample:
  """Position -> one eval example, or padding past the split's end."""

  def __init__(self, records: Any, settings: Any):
    self.records, self.settings = records, settings

  def _padding(self, replaced: int) -> dict[str, Any]:
    size, channels = self.settings.image_size, self.settings.channels
    return {
      "image": np.zeros((size, size, channels), np.uint8),
      "label": np.int32(0),  # A valid class: safe to gather.
      "mask": np.float32(0.0),
      "replaced": np.int32(replaced),
    }

  def __call__(self, position: int) -> dict[str, Any]:
    if position >= len(self.records):
      return self._padding(0)
    try:
      image, label = self.records[position]
      pixels = transforms.eval_transform(image, self.settings)
    except transforms.UndecodableImage as error:
      # Masked out rather than replaced: eval counts every example once.
      logging.warning(
        "Leaving %s out of eval: it does not decode (%s).",
        self.records.describe(position),
        error,
      )
      return self._padding(1)
    return {
      "image": pixels,
      "label": np.int32(label),
      "mask": np.float32(1.0),
      "replaced": np.int32(0),
    }


# --------------------------------------------------------------- arguments --


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # Imported late: the data tests need no JAX backend.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not sources.is_int(process_count) or process_count < 1:
    raise sources.DataConfigError(
      f"process_count={process_count!r} is invalid: expected an integer >= 1"
    )
  if not sources.is_int(process_index) or not 0 <= process_index < process_count:
    raise sources.DataConfigError(
      f"process_index={process_index!r} is invalid: expected "
      f"0 <= process_index < process_count={process_count}"
    )
  return int(process_index), int(process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if not sources.is_int(global_batch_size) or global_batch_size < 1:
    raise sources.DataConfigError(
      f"global_batch_size={global_batch_size!r} is invalid: expected an integer >= 1"
    )
  if global_batch_size % process_count:
    raise sources.DataConfigError(
      f"global_batch_size={global_batch_size} is invalid: it must be "
      f"divisible by process_count={process_count} (each host loads "
      "global_batch_size // process_count examples)"
    )
  return global_batch_size // process_count
