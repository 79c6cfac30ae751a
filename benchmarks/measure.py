"""The benchmark harness's measurements: each builds the things it times
(`steps`, `input_bench`), interleaves them and returns a row for the report.
`run.py` chooses what to measure and writes the report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

from benchmarks import common
from mae_jax.model import flops  # plain Python: imports no jax


def model_config_from(fields: dict, **extra):
  """A ModelConfig from {'preset': 'B/16' (or 'custom'), field: value, ...}."""
  from benchmarks import steps

  fields = dict(fields, **extra)
  return steps.model_config(fields.pop("preset", None), **fields)


def parse_fields(text: str) -> dict:
  """'width=64,scan_layers=true' -> {'width': 64, 'scan_layers': True}."""
  fields = {}
  for item in text.split(","):
    if item.strip():
      key, _, value = item.partition("=")
      try:
        fields[key.strip()] = json.loads(value)
      except json.JSONDecodeError:
        fields[key.strip()] = value
  return fields


def log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {message}", flush=True)


# ------------------------------------------------------------ measuring --


def step_row(label: str, step, timing: common.Timing) -> dict:
  """Throughput, FLOPs and memory of one measured mae_jax step."""
  cfg = step.cfg
  batch = step.batch_size
  model_flops = flops.train_flops_per_example(step.job, cfg)
  cost = step.cost()
  xla_per_image = cost["xla_flops_per_step"] / batch if cost["xla_flops_per_step"] else None
  row = {
    "label": label,
    "config": dataclasses.asdict(cfg),
    "batch": batch,
    "devices": step.mesh.size,
    "compile_s": step.lower_s + step.compile_s,
    "model_gflop_per_image": model_flops / 1e9,
    "xla_gflop_per_image": None if xla_per_image is None else xla_per_image / 1e9,
    "params": step.num_params,
  }
  row.update(timing.summary(batch))
  row["model_flops_per_s"] = model_flops * row["images_per_s"]
  row.update(step.memory())
  return row


def measure_compare(
  label: str,
  fields: dict,
  batch: int,
  *,
  dtype: str,
  warmup: int,
  steps_count: int,
  attention: str = "sdpa",
  mesh=None,
) -> dict:
  """mae_jax vs transformers' PyTorch ViTMAE, interleaved step by step."""
  from benchmarks import steps

  cfg = model_config_from(fields, dtype=dtype)
  log(f"compare {label} batch {batch}: compiling mae_jax")
  mae = steps.MaeStep(cfg, batch, mesh=mesh)
  log(f"  compiled in {mae.lower_s + mae.compile_s:.1f} s; building PyTorch model")
  torch_step = steps.TorchStep(cfg, batch, attention=attention, dtype=dtype)
  if mae.num_params != torch_step.num_params:
    raise AssertionError(
      f"not the same model: mae_jax has {mae.num_params} parameters, "
      f"transformers {torch_step.num_params}"
    )
  timings = common.interleave(
    {"mae_jax": mae.run, "torch": torch_step.run}, warmup=warmup, steps=steps_count
  )
  row = step_row(label, mae, timings["mae_jax"])
  row["torch"] = timings["torch"].summary(batch)
  row["torch"]["attention"] = torch_step.attention
  row["ratio"] = row["images_per_s"] / row["torch"]["images_per_s"]
  row["losses"] = {"mae_jax": mae.last_loss, "torch": torch_step.last_loss}
  log(
    f"  mae_jax {row['images_per_s']:.2f} img/s, torch {row['torch']['images_per_s']:.2f} "
    f"img/s: ratio {row['ratio']:.3f}"
  )
  mae.close()
  torch_step.close()
  return row


def measure_mask_tokens(
  label: str, fields: dict, batch: int, *, dtype: str, warmup: int, steps_count: int
) -> dict:
  """Visible-only encoder vs the paper's "w/ [M]" encoder, interleaved."""
  from benchmarks import steps

  log(f"mask tokens {label} batch {batch}: compiling both variants")
  visible = steps.MaeStep(model_config_from(fields, dtype=dtype), batch)
  with_mask = steps.MaeStep(model_config_from(fields, dtype=dtype, encoder_mask_tokens=True), batch)
  timings = common.interleave(
    {"visible": visible.run, "mask_tokens": with_mask.run}, warmup=warmup, steps=steps_count
  )
  rows = {
    "visible": step_row(label, visible, timings["visible"]),
    "mask_tokens": step_row(label + " w/ [M]", with_mask, timings["mask_tokens"]),
  }
  speedup = rows["visible"]["images_per_s"] / rows["mask_tokens"]["images_per_s"]
  flop_ratio = (
    rows["mask_tokens"]["model_gflop_per_image"] / rows["visible"]["model_gflop_per_image"]
  )
  log(
    f"  visible {rows['visible']['images_per_s']:.2f} img/s, w/ [M] "
    f"{rows['mask_tokens']['images_per_s']:.2f} img/s: {speedup:.2f}x (FLOPs {flop_ratio:.2f}x)"
  )
  visible.close()
  with_mask.close()
  return {"label": label, "batch": batch, "speedup": speedup, "flop_ratio": flop_ratio, **rows}


def measure_finetune(label: str, fields: dict, batch: int, *, dtype: str, steps_count: int):
  """The fine-tuning job's own step (the job table's builder) at a model size."""
  from benchmarks import steps

  log(f"fine-tuning step {label} batch {batch}: compiling")
  step = steps.FinetuneStep(model_config_from(fields, dtype=dtype), batch)
  timing = common.interleave({"finetune": step.run}, warmup=1, steps=steps_count)["finetune"]
  row = step_row(label + " fine-tuning", step, timing)
  log(f"  {row['images_per_s']:.2f} img/s")
  step.close()
  return row


def measure_memory(
  label: str, fields: dict, batch: int, *, dtype: str, policies: tuple[str, ...]
) -> list[dict]:
  from benchmarks import steps

  rows = []
  for policy in policies:
    log(f"memory {label} batch {batch} remat={policy}: compiling")
    step = steps.MaeStep(
      model_config_from(fields, dtype=dtype, remat_policy=policy), batch, execute=False
    )
    cost = step.cost()
    rows.append(
      {
        "label": label,
        "batch": batch,
        "remat": policy,
        "config": dataclasses.asdict(step.cfg),
        "compile_s": step.lower_s + step.compile_s,
        "model_gflop_per_image": flops.train_flops_per_image(step.cfg) / 1e9,
        "xla_gflop_per_image": (cost["xla_flops_per_step"] or 0) / batch / 1e9,
        **step.memory(),
      }
    )
    step.close()
  return rows


def measure_variants(
  base: tuple[str, dict, int], variants: list[tuple[str, dict]], *, dtype: str, steps_count: int
) -> list[dict]:
  """mae_jax variants (remat, scan, dtype, attention path, donation) of one
  configuration, each step interleaved with the unchanged configuration, so
  that each row's ratio to it is a same-run ratio."""
  from benchmarks import steps

  label, base_fields, batch = base
  contestants = {}
  for name, changes in [("baseline", {})] + list(variants):
    fields = dict({"dtype": dtype}, **base_fields, **changes)
    donate = fields.pop("donate", True)
    log(f"variant {label} {name}, batch {batch}: compiling")
    contestants[name] = steps.MaeStep(model_config_from(fields), batch, donate=donate)
  timings = common.interleave(
    {name: step.run for name, step in contestants.items()}, warmup=1, steps=steps_count
  )
  rows = []
  for name, step in contestants.items():
    row = step_row(f"{label} {name}", step, timings[name])
    row["vs_baseline"] = timings["baseline"].median / timings[name].median
    log(
      f"  {name}: {row['images_per_s']:.2f} img/s ({row['vs_baseline']:.2f}x the baseline), "
      f"compile {row['compile_s']:.1f} s"
    )
    rows.append(row)
    step.close()
  return rows


def measure_matmul(dtype: str, size: int) -> dict:
  from benchmarks import steps

  result = steps.matmul_rate(dtype, size, repeats=7)
  log(f"matmul {dtype} {size}^3: {result['flops_per_s'] / 1e9:.1f} GFLOP/s")
  return result


@contextlib.contextmanager
def avx2_code(scratch: str):
  """Every measuring process (and the fidelity check here) runs the AVX2
  code paths while inside (input_bench.avx2_code_environment)."""
  from benchmarks import input_bench
  from mae_jax.data import crop_resize

  environment = input_bench.avx2_code_environment(scratch)
  saved = {name: os.environ.get(name) for name in environment}
  library = crop_resize.LIBRARY
  os.environ.update(environment)
  crop_resize.LIBRARY = environment["MAE_JAX_CROP_RESIZE_LIBRARY"]
  crop_resize.load.cache_clear()
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    crop_resize.LIBRARY = library
    crop_resize.load.cache_clear()


def measure_input(jpeg_dir: str, spec: Any) -> dict:
  """The native crop decoder's pixels against the reference; the transform
  alone and the pipeline on one core, native and fallback side by side;
  one worker process per core on 1 and on every core; the resume time at
  0-400 epochs."""
  from benchmarks import input_bench, jpegs

  if not os.path.isdir(os.path.join(jpeg_dir, "train")):
    jpegs.write_jpegs(
      jpeg_dir, spec.jpeg_images, records=spec.jpeg_records, content=spec.jpeg_content
    )
  cores = len(os.sched_getaffinity(0))
  sizes = dict(
    image_size=spec.jpeg_image_size, batch_size=spec.jpeg_batch, batches=spec.jpeg_batches
  )
  out = {
    "images": spec.jpeg_images,
    "content": spec.jpeg_content,
    "records": max(spec.jpeg_records, spec.jpeg_images),
    "fidelity": input_bench.crop_fidelity(
      jpeg_dir, image_size=spec.jpeg_image_size, boxes=spec.jpeg_fidelity_boxes
    ),
  }
  fidelity = out["fidelity"]
  if fidelity["native"]:
    log(
      f"native crops vs the reference: {fidelity['crops_differing']} of {fidelity['boxes']} "
      f"differ, by at most {fidelity['max_levels']} levels"
    )
  # Native and fallback alternate, so that drift on a shared machine hits both.
  for key, native in (("transform", True), ("transform_fallback", False)):
    out[key] = input_bench.transform_throughput(jpeg_dir, native=native, **sizes)
    log(f"train transform alone, 1 core, native={native}: {out[key]['images_per_s']:.1f} img/s")
  runs = (
    ("one_core_in_process", dict(cores=1, workers=0, native=True)),
    ("one_core_fallback", dict(cores=1, workers=0, native=False)),
    ("one_core", dict(cores=1, workers=1)),
    ("all_cores", dict(cores=cores, workers=cores, threads=1)),
    ("all_cores_in_process", dict(cores=cores, workers=0, threads=cores)),
  )
  if cores >= 2:
    # A GPU host's layout: the worker has a core, the training process
    # (which receives the batches) another; "one_core" shares one between
    # them, so the hand-off's cost lands on the worker's rate there.
    runs += (("one_worker_own_core", dict(cores=2, workers=1)),)
  for key, settings in runs:
    out[key] = input_bench.jpeg_throughput(jpeg_dir, **{"threads": 1, **settings}, **sizes)
    log(f"input pipeline, {key} {settings}: {out[key]['images_per_s']:.1f} img/s")
  out["resume"] = input_bench.resume_times(
    jpeg_dir, batch_size=spec.jpeg_batch, image_size=spec.jpeg_image_size
  )
  times = ", ".join(f"{row['first_batch_s']:.2f}" for row in out["resume"]["rows"])
  log(f"input pipeline, first batch after resuming at 0/10/40/400 epochs: {times} s")
  return out


# ------------------------------------------------------------- standard --
