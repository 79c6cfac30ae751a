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

import functools
import math
import signal
import types
from typing import Any, Iterator

import grain
import numpy as np
from absl import flags, logging

from mae_jax.data import crop_resize, randaugment, sources, transforms
from mae_jax.image_size import image_hw

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
  _log_jpeg_path()
  # A plain, picklable copy of the settings for Grain's worker processes.
  settings = types.SimpleNamespace(**data_config.to_dict())
  # Grain orders and slices positions; each batch is then built by one call
  # that writes every image straight into the batch's array (no per-image
  # arrays, no stacking: docs/data.md has what that saved).
  if train:
    order = grain.MapDataset.range(len(records)).shuffle(seed=_order_seed(seed)).repeat()
    # Chunk c of B_local (position, index) pairs; global batch s on host p
    # is chunk s * P + p.
    chunks = order.map_with_index(_position_and_index).batch(local_batch_size, drop_remainder=True)
    host_chunks = chunks[start_step * process_count + process_index :: process_count]
    host_batches = host_chunks.map(_TrainBatch(records, settings, seed))
  else:
    num_batches = math.ceil(len(records) / global_batch_size)
    positions = grain.MapDataset.range(num_batches * global_batch_size)
    chunks = positions.batch(local_batch_size, drop_remainder=True)
    host_batches = chunks[process_index::process_count].map(_EvalBatch(records, settings))
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
      ),
      worker_init_fn=_leave_ctrl_c_to_the_trainer,
    )
  return dataset


def _leave_ctrl_c_to_the_trainer(worker_index: int, worker_count: int) -> None:
  """A terminal's Ctrl-C reaches the workers too: they ignore it, so the
  training process saves its checkpoint and then shuts them down, with no
  traceback from each worker."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


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


@functools.lru_cache(maxsize=1)
def _log_jpeg_path() -> None:
  """Says once per process how JPEG crops are decoded (crop_resize.py)."""
  if crop_resize.available():
    logging.info("%s", crop_resize.describe())
  else:
    logging.warning("%s", crop_resize.describe())


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


def _position_and_index(position: int, index: int) -> np.ndarray:
  """Global example position q and the example `order[q]` it holds."""
  return np.array([position, index], np.int64)


def _empty_batch(settings: Any, size: int) -> dict[str, np.ndarray]:
  height, width = image_hw(settings.image_size)
  return {
    "image": np.empty((size, height, width, settings.channels), np.uint8),
    "label": np.empty(size, np.int32),
    "mask": np.ones(size, np.float32),
    "replaced": np.zeros(size, np.int32),
  }


class _TrainBatch:
  """[B_local, 2] (position, index) pairs -> one augmented batch; picklable
  for Grain's workers. Example i draws from the generator of (seed, its
  position), so its images are those of any other batching."""

  def __init__(self, records: Any, settings: Any, seed: int):
    self.records, self.settings, self.seed = records, settings, int(seed)

  def __call__(self, pairs: np.ndarray) -> dict[str, np.ndarray]:
    batch = _empty_batch(self.settings, len(pairs))
    boxes = []
    for i, (position, index) in enumerate(pairs):
      rng = np.random.default_rng([self.seed % 2**63, int(position)])
      slot = batch["image"][i]
      _, batch["label"][i], batch["replaced"][i] = _load(
        self.records,
        int(index),
        lambda raw: transforms.train_transform(raw, rng, self.settings, out=slot),
      )
      if self.settings.random_erasing:
        # The reference's last augmentation, so its draws come last.
        height, width = image_hw(self.settings.image_size)
        boxes.append(
          randaugment.random_erasing_box(
            rng, height, width, probability=self.settings.random_erasing
          )
        )
    if boxes:
      batch["erase_box"] = np.stack(boxes)
    return batch


class _EvalBatch:
  """[B_local] positions -> one eval batch; positions past the split's end,
  and images that do not decode, are padding (mask 0)."""

  def __init__(self, records: Any, settings: Any):
    self.records, self.settings = records, settings

  def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    batch = _empty_batch(self.settings, len(positions))
    for i, position in enumerate(int(p) for p in positions):
      if position < len(self.records):
        try:
          image, batch["label"][i] = self.records[position]
          batch["image"][i] = transforms.eval_transform(image, self.settings)
          continue
        except transforms.UndecodableImage as error:
          # Masked out rather than replaced: eval counts every example once.
          logging.warning(
            "Leaving %s out of eval: it does not decode (%s).",
            self.records.describe(position),
            error,
          )
          batch["replaced"][i] = 1
      batch["image"][i] = 0
      batch["label"][i] = 0  # A valid class: safe to gather.
      batch["mask"][i] = 0.0
    return batch


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
