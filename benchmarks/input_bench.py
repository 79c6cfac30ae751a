"""Input-pipeline benchmarks.

1. JPEG throughput: the real `mae_jax.data.make_dataset` (source
   "image_folder", the ImageNet settings: decode, RandomResizedCrop with
   bicubic antialiased resize, flip, normalise, batch) over synthetic JPEGs of
   ImageNet-like size, at `image_size` px. Measured with tf.data limited to one
   core (images/s per core) and with all of this process's cores.
2. Input wait of a real pretraining run: a short digits pretraining run
   (`train_and_evaluate`), whose loop logs `input_wait_fraction` (time blocked
   on the next batch / train time) to metrics.jsonl; or an existing run's
   metrics.jsonl.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import numpy as np

# ImageNet-1k's typical photo: about 400 x 350, ~110 KB as JPEG.
JPEG_SHAPE = (375, 500)


def write_jpegs(
  root: str, count: int, *, shape=JPEG_SHAPE, seed: int = 0, quality: int = 90
) -> str:
  """root/train/<class>/*.jpg with smooth, photo-like random content."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  height, width = shape
  for index in range(count):
    folder = os.path.join(root, "train", f"class_{index % 4}")
    os.makedirs(folder, exist_ok=True)
    # Low-frequency colour field plus mild texture: decodes like a photo
    # (pure noise would be unrealistically slow to decode).
    coarse = rng.uniform(0, 255, size=(height // 25 + 1, width // 25 + 1, 3))
    image = np.kron(coarse, np.ones((25, 25, 1)))[:height, :width]
    image = image + rng.normal(0, 12, size=image.shape)
    encoded = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
      encoded, format="JPEG", quality=quality
    )
    with open(os.path.join(folder, f"{index:05d}.jpg"), "wb") as f:
      f.write(encoded.getvalue())
  return root


def jpeg_throughput(
  root: str,
  *,
  image_size: int = 224,
  batch_size: int = 32,
  batches: int = 16,
  threads: int | None = None,
  warmup_batches: int = 2,
) -> dict[str, Any]:
  """Images/s of the training pipeline over the JPEG folder at `root`.

  `threads=1` confines tf.data (its private pool and intra-op parallelism)
  to one core: that is the images/s per host core.
  """
  import tensorflow as tf

  from mae_jax.data import imagenet_data_config, make_dataset

  config = imagenet_data_config(
    source="image_folder", data_dir=root, image_size=image_size, shuffle_buffer=256
  )
  dataset = make_dataset(
    config,
    split="train",
    global_batch_size=batch_size,
    train=True,
    seed=0,
    process_index=0,
    process_count=1,
  )
  if threads:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    dataset = dataset.with_options(options)
  iterator = iter(dataset.as_numpy_iterator())
  for _ in range(warmup_batches):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  assert batch["image"].shape == (batch_size, image_size, image_size, 3)
  images = batches * batch_size
  return {
    "threads": threads or len(os.sched_getaffinity(0)),
    "images": images,
    "seconds": seconds,
    "images_per_s": images / seconds,
  }


def digits_input_wait(
  workdir: str,
  *,
  steps: int = 100,
  log_every: int = 20,
  data_dir: str | None = None,
  overrides: dict | None = None,
) -> dict:
  """Runs a short digits pretraining (the bundled preset) and reads its
  `input_wait_fraction`; `overrides` change config fields (tests: tiny)."""
  from configs import pretrain as pretrain_config
  from mae_jax.train.pretrain import train_and_evaluate

  config = pretrain_config.get_config("digits")
  config.num_train_steps = steps
  config.log_every_steps = log_every
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.eval_batches = 1
  config.num_reconstructions = 2
  config.progress_bar = "off"
  if data_dir:
    config.data.data_dir = data_dir
  for key, value in (overrides or {}).items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  start = time.perf_counter()
  train_and_evaluate(config, workdir)
  result = read_input_wait(os.path.join(workdir, "metrics.jsonl"))
  result.update(
    steps=steps,
    batch=config.global_batch_size,
    wall_s=time.perf_counter() - start,
    source="short digits run",
  )
  return result


def read_input_wait(metrics_path: str) -> dict:
  """Train-time-weighted input wait over every logged interval of a run."""
  lines = [json.loads(line) for line in open(metrics_path)]
  intervals = [line for line in lines if "input_wait_fraction" in line]
  if not intervals:
    raise ValueError(f"{metrics_path} has no input_wait_fraction entries")
  # Weight each interval by its length in steps (its time is not logged);
  # the first interval starts after step 1, which includes compilation.
  previous, weights = 1, []
  for line in intervals:
    weights.append(max(line["step"] - previous, 1))
    previous = line["step"]
  fractions = [line["input_wait_fraction"] for line in intervals]
  weighted = float(np.average(fractions, weights=weights))
  rates = [line["images_per_sec"] for line in intervals if "images_per_sec" in line]
  return {
    "input_wait_fraction": weighted,
    "max_interval_fraction": max(fractions),
    "intervals": len(intervals),
    "train_images_per_s": float(np.median(rates)) if rates else None,
    "metrics": metrics_path,
  }
