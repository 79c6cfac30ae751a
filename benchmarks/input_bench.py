"""Input-pipeline benchmarks.

1. JPEG throughput: the real `mae_jax.data.make_iterator` (source
   "image_folder", the ImageNet settings: decode, RandomResizedCrop with
   bicubic antialiased resize, flip, batch as uint8) over synthetic JPEGs of
   ImageNet-like size, at `image_size` px, in a fresh process pinned to 1 or
   more cores, with Grain worker processes or threads.
2. Resume: time to the first batch of a run resumed after 0, 10, 40, 400
   epochs (fresh process each); flat when the resume reads nothing before.
3. Input wait of a real pretraining run: a short digits pretraining run
   (`train_and_evaluate`), whose loop logs `input_wait_fraction` (time blocked
   on the next batch / train time) to metrics.jsonl; or an existing run's
   metrics.jsonl.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
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


def _in_child(spec: dict) -> dict:
  """Runs `spec` in a fresh Python process (pinned to `spec["cores"]` CPUs
  when given) and returns its JSON result: each measurement starts cold, as
  a (resumed) run does, and cores are limited for real, worker processes
  included (they inherit the affinity)."""
  result = subprocess.run(
    [sys.executable, "-m", "benchmarks.input_bench", json.dumps(spec)],
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    capture_output=True,
    text=True,
    check=False,
  )
  if result.returncode:
    raise RuntimeError(f"input benchmark child failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def _folder_config(root: str, spec: dict):
  from mae_jax.data import imagenet_data_config

  return imagenet_data_config(
    source="image_folder",
    data_dir=root,
    image_size=spec.get("image_size", 224),
    num_workers=spec.get("workers", 0),
    read_threads=spec.get("threads", 1),
    prefetch=spec.get("prefetch", 4),
  )


def _measure_transform(spec: dict) -> dict:
  """The training transform alone (decode, crop, resize, flip) in a loop over
  the files' bytes already in memory, with the pipeline's per-example
  generators: the rate the pipeline could at best deliver on these cores."""
  from mae_jax.data import transforms

  config = _folder_config(spec["root"], spec)
  paths = sorted(
    os.path.join(folder, name)
    for folder, _, names in os.walk(os.path.join(spec["root"], "train"))
    for name in names
  )
  encoded = [open(path, "rb").read() for path in paths]
  count = spec["batches"] * spec["batch_size"]
  for index in range(min(16, len(encoded))):  # warm-up: imports, caches
    transforms.train_transform(encoded[index], np.random.default_rng(index), config)
  start = time.perf_counter()
  for index in range(count):
    rng = np.random.default_rng(index)
    transforms.train_transform(encoded[index % len(encoded)], rng, config)
  seconds = time.perf_counter() - start
  return {"images": count, "seconds": seconds, "images_per_s": count / seconds}


def _measure(spec: dict) -> dict:
  from mae_jax.data import make_iterator

  if spec.get("cores"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: spec["cores"]])
  if spec["kind"] == "transform":
    return _measure_transform(spec)
  config = _folder_config(spec["root"], spec)
  batch_size = spec["batch_size"]
  start = time.perf_counter()
  iterator = make_iterator(
    config,
    split="train",
    global_batch_size=batch_size,
    train=True,
    seed=0,
    process_index=0,
    process_count=1,
    start_step=spec.get("start_step", 0),
  )
  batch = next(iterator)
  first_batch_s = time.perf_counter() - start
  assert batch["image"].shape[0] == batch_size
  if spec["kind"] == "resume":
    return {"first_batch_s": first_batch_s}
  for _ in range(spec.get("warmup_batches", 2)):
    next(iterator)
  start = time.perf_counter()
  for _ in range(spec["batches"]):
    next(iterator)
  seconds = time.perf_counter() - start
  images = spec["batches"] * batch_size
  return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def jpeg_throughput(
  root: str,
  *,
  cores: int,
  workers: int,
  threads: int = 2,
  image_size: int = 224,
  batch_size: int = 32,
  batches: int = 16,
) -> dict[str, Any]:
  """Images/s of the training pipeline (decode, RandomResizedCrop, flip,
  batch as uint8) over the JPEG folder at `root`, on `cores` CPUs with
  `workers` Grain worker processes (0: `threads` threads in one process)."""
  spec = dict(
    kind="throughput",
    root=root,
    cores=cores,
    workers=workers,
    threads=threads,
    image_size=image_size,
    batch_size=batch_size,
    batches=batches,
  )
  result = _in_child(spec)
  result.update(cores=cores, workers=workers, threads=threads)
  result["images_per_s_per_core"] = result["images_per_s"] / cores
  return result


def transform_throughput(
  root: str, *, image_size: int = 224, batch_size: int = 32, batches: int = 16
) -> dict[str, Any]:
  """Images/s of `train_transform` alone on one core, on the same files and
  boxes as `jpeg_throughput`: the ceiling the pipeline's rate is held to."""
  spec = dict(
    kind="transform",
    root=root,
    cores=1,
    image_size=image_size,
    batch_size=batch_size,
    batches=batches,
  )
  return _in_child(spec)


def resume_times(
  root: str, *, epochs=(0, 10, 40, 400), batch_size: int = 32, image_size: int = 224
) -> dict[str, Any]:
  """Seconds from `make_iterator` to the first batch of a run resumed after
  `epochs` epochs of the folder, each in a fresh process (as a restart)."""
  from mae_jax.data import dataset_info

  spec = dict(root=root, image_size=image_size)
  num_train = dataset_info(_folder_config(root, spec))[0]["train"]
  steps_per_epoch = num_train // batch_size
  rows = []
  for epoch in epochs:
    start_step = epoch * steps_per_epoch
    result = _in_child(
      dict(
        kind="resume",
        root=root,
        batch_size=batch_size,
        image_size=image_size,
        start_step=start_step,
        threads=2,
      )
    )
    rows.append({"epoch": epoch, "start_step": start_step, **result})
  times = [row["first_batch_s"] for row in rows]
  return {
    "images": num_train,
    "batch_size": batch_size,
    "rows": rows,
    "flat": max(times) <= min(times) * 1.2 or max(times) - min(times) <= 0.5,
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


if __name__ == "__main__":
  print(json.dumps(_measure(json.loads(sys.argv[1]))))
