"""Input-pipeline benchmarks.

1. JPEG throughput: the real `mae_jax.data.make_iterator` (source
   "image_folder", the ImageNet settings: decode, RandomResizedCrop with
   bicubic antialiased resize, flip, batch as uint8) over JPEGs (`jpegs.py`) of
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

from benchmarks import jpegs


def avx2_code_environment(scratch: str) -> dict[str, str]:
  """The environment in which an AVX-512 CPU runs the input pipeline's
  AVX2 code, as an AVX2-only CPU would: the crop decoder built with its AVX2
  and plain clones only (built into `scratch`), numpy's AVX-512 loops and
  glibc's AVX-512 string functions off. libjpeg-turbo (the system's and
  simplejpeg's), Pillow and Python have no AVX-512 code. What stays this
  CPU's own: its clock, caches and cores."""
  from mae_jax.data import crop_resize

  library = crop_resize.build(output=os.path.join(scratch, "crop_resize_avx2.so"), clones="avx2")
  return {
    "MAE_JAX_CROP_RESIZE_LIBRARY": library,
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD",
  }


def code_in_use() -> dict[str, Any]:
  """Which vector code this process runs: the crop decoder's resize clone
  and numpy's dispatched loops (the benchmark records it per row)."""
  from numpy._core import _multiarray_umath as umath

  from mae_jax.data import crop_resize

  return {
    "resize_code": crop_resize.vector_code() if crop_resize.available() else None,
    "numpy_dispatch": [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)],
  }


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
  encoded = [open(path, "rb").read() for path in jpegs.jpeg_files(spec["root"])]
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
  from mae_jax.data import crop_resize, make_iterator

  # False: the simplejpeg + Pillow fallback, for the side-by-side rows
  # (threads in this process only: worker processes start afresh).
  crop_resize.enabled = spec.get("native", True)
  if spec.get("cores"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: spec["cores"]])
  if spec["kind"] == "transform":
    return {**_measure_transform(spec), **code_in_use()}
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
  return {"images": images, "seconds": seconds, "images_per_s": images / seconds, **code_in_use()}


def jpeg_throughput(
  root: str,
  *,
  cores: int,
  workers: int,
  threads: int = 1,
  image_size: int = 224,
  batch_size: int = 32,
  batches: int = 16,
  native: bool = True,
) -> dict[str, Any]:
  """Images/s of the training pipeline (decode, RandomResizedCrop, flip,
  batch as uint8) over the JPEG folder at `root`, on `cores` CPUs with
  `workers` Grain worker processes of `threads` threads each (0 workers:
  the threads run in the measuring process); `native=False`: the
  simplejpeg + Pillow fallback instead of the native crop decoder."""
  if native is False and workers:
    raise ValueError("native=False is measured in-process only (workers=0)")
  spec = dict(
    kind="throughput",
    root=root,
    cores=cores,
    workers=workers,
    threads=threads,
    image_size=image_size,
    batch_size=batch_size,
    batches=batches,
    native=native,
  )
  result = _in_child(spec)
  result.update(cores=cores, workers=workers, threads=threads, native=native)
  result["images_per_s_per_core"] = result["images_per_s"] / cores
  return result


def transform_throughput(
  root: str,
  *,
  image_size: int = 224,
  batch_size: int = 32,
  batches: int = 16,
  native: bool = True,
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
    native=native,
  )
  result = _in_child(spec)
  result["native"] = native
  return result


def crop_fidelity(root: str, *, image_size: int = 224, boxes: int = 256) -> dict[str, Any]:
  """The native crop decoder against the reference (Pillow's decode, then
  `crop(box)` and `resize(BICUBIC)`, torchvision's F.resized_crop on a PIL
  image) on `boxes` RandomResizedCrop boxes of the JPEGs
  at `root`: the largest difference in levels and how many crops differ."""
  from PIL import Image

  from mae_jax.data import crop_resize, transforms

  if not crop_resize.available():
    return {"boxes": 0, "native": False}
  rng = np.random.default_rng(0)
  paths = jpegs.jpeg_files(root)
  largest, differing = 0, 0
  for index in range(boxes):
    encoded = open(paths[index % len(paths)], "rb").read()
    reference = Image.open(io.BytesIO(encoded)).convert("RGB")
    box = transforms.random_resized_crop_box(
      rng, reference.height, reference.width, (0.2, 1.0), (3 / 4, 4 / 3)
    )
    top, left, height, width = box
    cropped = reference.crop((left, top, left + width, top + height))
    expected = np.asarray(cropped.resize((image_size, image_size), Image.BICUBIC))
    ours = crop_resize.crop_resize(encoded, 3, box, (image_size, image_size))
    difference = int(np.abs(ours.astype(np.int16) - expected).max())
    largest, differing = max(largest, difference), differing + (difference > 0)
  return {"boxes": boxes, "native": True, "max_levels": largest, "crops_differing": differing}


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
  from mae_jax.jobs.pretrain import train_and_evaluate

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
