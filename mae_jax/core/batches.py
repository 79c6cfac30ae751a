"""Host batches -> global arrays on the mesh, and the labelled passes over a split.

Every host holds only its rows of a global batch (the data pipeline's
slice); `jax.make_array_from_process_local_data` assembles the global array
split over the mesh's data axes. Pretraining, the evaluation jobs and the
k-NN monitor all feed their steps through here.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import numpy as np

from mae_jax.core import sharding
from mae_jax.data import make_iterator
from mae_jax.errors import ConfigError

# The key under which a global batch carries this host's count of replaced
# (undecodable) images to the step loop, which pops it and logs the sum.
NUM_REPLACED = "num_replaced"


def replaced_count(local_batch: dict) -> int:
  """Host-side: this host's images replaced because they did not decode."""
  return int(np.sum(local_batch.get("replaced", 0)))


def close_iterator(iterator: Any) -> None:
  """Closes a batch stream that stopped early (a stop, an error), and so
  the Grain iterator under it: its worker processes stop and the batches
  they had ready in shared memory are released now, not at shutdown."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


def device_prefetch(local_batches: Iterator[dict], batch_sharding, size: int) -> Iterator[dict]:
  """Keeps `size` batches already transferred to the devices ahead of the
  step that consumes them, so host-to-device copies overlap compute."""
  queue: collections.deque = collections.deque()
  try:
    for local_batch in local_batches:
      global_batch = to_global(local_batch, batch_sharding)
      global_batch[NUM_REPLACED] = replaced_count(local_batch)
      queue.append(global_batch)
      if len(queue) > size:
        yield queue.popleft()
    while queue:
      yield queue.popleft()
  finally:
    close_iterator(local_batches)


def to_global(local_batch: dict, batch_sharding) -> dict:
  """Per-host numpy batch -> global arrays split over the data axes."""
  return {
    key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(value))
    for key, value in local_batch.items()
    if key in ("image", "mask")
  }


@dataclasses.dataclass(frozen=True)
class InputSettings:
  """What a run's batch streams read (resolved in its plan): the data
  section (`mae_jax.data`'s own settings), the global batch, the seed."""

  data: Any
  global_batch_size: int
  seed: int

  @classmethod
  def from_config(cls, config) -> "InputSettings":
    return cls(config.data, config.global_batch_size, config.seed)


def train_split_batches(inputs: InputSettings, start_step: int) -> Iterator[dict]:
  """This host's numpy batches of the training split from `start_step`
  (the train transform, the global batch, the run's seed)."""
  return make_iterator(
    inputs.data,
    split=inputs.data.train_split,
    global_batch_size=inputs.global_batch_size,
    train=True,
    seed=inputs.seed,
    start_step=start_step,
  )


def check_labels(labels: np.ndarray, mask: np.ndarray, num_classes: int, where: str) -> None:
  real = np.asarray(labels)[np.asarray(mask) > 0]
  if real.size and (real.min() < 0 or real.max() >= num_classes):
    outside = sorted({int(label) for label in real[(real < 0) | (real >= num_classes)]})
    raise ConfigError(
      f"{where}: labels {outside} "
      f"are outside the head's {num_classes} classes (0..{num_classes - 1}); "
      "set config.num_classes, or fix the dataset's labels."
    )


def labelled_batch_fields(config, model_config, batch_size: int) -> dict:
  """{name: (shape, dtype)} of the labelled global batches `labelled_batch`
  makes from the pipeline (for a step lowered with abstract inputs)."""
  cfg, rows = model_config, (batch_size,)
  fields = {
    "image": (rows + (*cfg.image_hw, cfg.channels), np.uint8),
    "label": (rows, np.int32),
    "mask": (rows, np.float32),
  }
  if config.data.random_erasing:
    fields["erase_box"] = (rows + (4,), np.int32)
  return fields


def labelled_batch(local: dict, batch_sharding, num_classes: int, where: str) -> dict:
  """Per-host numpy batch -> global arrays of images, labels and the padding
  mask, and fine-tuning's random-erasing boxes when the pipeline drew them."""
  check_labels(local["label"], local["mask"], num_classes, where)
  return {
    key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local[key]))
    for key in ("image", "label", "mask", "erase_box")
    if key in local
  }


def labelled_train_batches(
  local_batches: Iterator[dict], batch_sharding, num_classes: int
) -> Iterator[dict]:
  """Training batches of the evaluation jobs, with the replaced-image count for the loop."""
  try:
    for local in local_batches:
      batch = labelled_batch(local, batch_sharding, num_classes, "training data")
      batch[NUM_REPLACED] = replaced_count(local)
      yield batch
  finally:
    close_iterator(local_batches)


def global_from_host(array: np.ndarray, batch_sharding) -> jax.Array:
  """A host array that every process holds whole -> a global array split by batch."""
  return jax.make_array_from_callback(array.shape, batch_sharding, lambda index: array[index])


def array_batches(arrays: dict[str, np.ndarray], batch_size: int, batch_sharding) -> Iterator[dict]:
  """One padded pass over whole host arrays (every host holds all rows), as
  global batches with a "mask" (0 = padding), like the eval pipeline."""
  count = len(next(iter(arrays.values())))
  for start in range(0, count, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < count
    rows = np.where(valid, rows, 0)
    batch = {key: value[rows] for key, value in arrays.items()}
    batch["mask"] = valid.astype(np.float32)
    yield {key: global_from_host(value, batch_sharding) for key, value in batch.items()}


def epoch_batches(
  arrays: dict[str, np.ndarray], batch_size: int, batch_sharding, *, seed: int, start_step: int
) -> Iterator[dict]:
  """Endless shuffled batches of whole host arrays (cached features).

  Epoch e is a permutation drawn from (seed, e), the remainder dropped, so
  batch k is the same after a restart: `start_step` replays from there.
  """
  count = len(next(iter(arrays.values())))
  per_epoch = count // batch_size
  step = start_step
  while True:
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(count)
    rows = order[index * batch_size : (index + 1) * batch_size]
    yield {key: global_from_host(value[rows], batch_sharding) for key, value in arrays.items()}
    step += 1


def split_batches(
  inputs: InputSettings, split: str, batch_size: int, batch_sharding, num_classes: int
) -> Iterator[dict]:
  """One padded pass over `split` with the eval transform, as labelled global batches."""
  local = make_iterator(
    inputs.data, split=split, global_batch_size=batch_size, train=False, seed=inputs.seed
  )
  try:
    for batch in local:
      yield labelled_batch(batch, batch_sharding, num_classes, f"data split {split!r}")
  finally:
    close_iterator(local)


def extract_features(
  features_fn: Callable, params: Any, batches: Iterator[dict], mesh, max_batches: int = -1
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], labels [N]) of the real (mask 1) examples of `batches`,
  on every host. `features_fn(params, images)` runs jitted on the mesh."""
  step = feature_step(features_fn, mesh)
  features, labels = [], []
  for index, batch in enumerate(batches):
    if 0 <= max_batches <= index:
      break
    out, label, mask = jax.device_get(step(params, batch))
    keep = np.asarray(mask) > 0
    features.append(np.asarray(out)[keep])
    labels.append(np.asarray(label)[keep])
  return np.concatenate(features), np.concatenate(labels)


@functools.lru_cache(maxsize=8)
def feature_step(features_fn: Callable, mesh):
  """Jitted once per features_fn: the k-NN monitor extracts features again
  every `knn_every_steps` during pretraining, and would recompile each time."""
  # Replicated outputs: every host gets every row, in order.
  return jax.jit(
    lambda p, batch: (features_fn(p, batch["image"]), batch["label"], batch["mask"]),
    out_shardings=sharding.replicated(mesh),
  )
