"""The plan: the job's own step program compiled for a pod or GPU hosts, and what it needs.

See `mae_jax.aot` for where each number comes from.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from mae_jax import jobs
from mae_jax.aot import collectives, evaluations, topologies
from mae_jax.aot.roofline import cost_of, roofline
from mae_jax.core.units import gib
from mae_jax.errors import UsageError
from mae_jax.image_size import size_text
from mae_jax.model.flops import train_flops_per_example

EXIT_DOES_NOT_FIT, EXIT_BAD_INPUT = 1, 2

KNOWN_DATASETS = {("tfds", "imagenet2012"): (1_281_167, 1000), ("digits", ""): (1_497, 10)}


@dataclasses.dataclass
class Report:
  topology: str
  accelerator_type: str
  chips: int
  hosts: int
  mesh: dict
  slices_per_axis: dict  # how many TPU slices each mesh axis spans
  model: str
  params: int
  global_batch: int
  batch_per_chip: float  # per micro-batch
  grad_accum_steps: int
  dtype: str
  remat_policy: str
  hbm_bytes: int | None  # None: no limit known (cpu)
  state_bytes: int  # per chip, from the state's shardings
  device_total_bytes: int | None = None  # a GPU's whole memory (CUDA's total)
  memory: dict | None = None  # per chip, from the compiler
  compiler_flops: float | None = None
  model_flops: float = 0.0  # whole step, all chips
  bytes_accessed: float | None = None
  step_seconds: float | None = None
  step_time_source: str = ""
  mfu: float | None = None
  # Where FLOPs and bytes come from: the program itself, or its unrolled
  # twin (XLA's cost analysis counts a loop body once: see `loop_free_cost`).
  cost_source: str = "the compiled step"
  compute_seconds: float | None = None  # compiled FLOPs / the dtype's peak
  memory_seconds: float | None = None  # bytes accessed / HBM bandwidth
  peak_flops: float | None = None  # per chip, of the compute dtype
  peak_label: str = ""
  collectives: dict = dataclasses.field(default_factory=dict)  # op -> count in the HLO
  # link name -> {count, bytes, seconds, bandwidth} per chip and step
  collective_links: dict = dataclasses.field(default_factory=dict)
  collective_seconds: float | None = None
  memory_note: str = ""
  device_noun: str = "chips"  # "GPUs" for GPU topologies
  fits: bool = True
  compile_error: str = ""
  job: str = "pretrain"  # config.job: whose train step was planned
  frozen_bytes: int = 0  # per chip, undonated inputs (the probe's frozen encoder)
  suggestions: list = dataclasses.field(default_factory=list)
  # the evaluation programs: {name, where, total (bytes per device), fits, error}
  evaluations: list = dataclasses.field(default_factory=list)


def check_plan(
  config,
  topology: topologies.Topology,
  *,
  hbm_bytes: int | None = None,
  evaluations: bool = True,
) -> Report:
  """Builds, lowers and compiles the job's train step and (unless
  `evaluations` is off) its evaluation programs (the k-NN job: only those);
  a UserError for bad input."""
  # First: jaxlib's GPU plugin itself refuses some of these settings, less clearly.
  memory_limit, memory_note = memory_limit_of(topology.chip, hbm_bytes)
  devices = topologies.devices(topology)
  plan = plan_without_data(config, devices)
  mesh = plan.make_mesh(devices)
  trains = jobs.job_of(config).program is not None
  try:
    program = step_program(config, plan, mesh) if trains else None
    lowered = program.lower() if trains else None
  except (NotImplementedError, RuntimeError) as error:
    if plan.model.attention_impl != "cudnn":
      raise
    raise UsageError(cudnn_refusal(error)) from error
  cfg, chip = plan.model, topology.chip
  job = config.get("job", "pretrain")
  report = Report(
    topology=topology.name,
    accelerator_type=topology.accelerator_type,
    chips=len(devices),
    hosts=len({d.process_index for d in devices}),
    mesh=dict(mesh.shape),
    slices_per_axis=slices_per_axis(mesh),
    model=describe_model(cfg),
    params=sum(math.prod(x.shape) for x in jax.tree.leaves(program.abstract_state.params))
    if trains
    else 0,
    global_batch=config.global_batch_size,
    batch_per_chip=plan.micro_batch_size / plan.data_parallel,
    grad_accum_steps=config.grad_accum_steps,
    dtype=cfg.dtype,
    remat_policy=cfg.remat_policy,
    hbm_bytes=memory_limit,
    device_total_bytes=chip.hbm_bytes if chip is not None and chip.gpu else None,
    memory_note=memory_note,
    device_noun=topology.device_noun,
    state_bytes=per_device_bytes(program.abstract_state) if trains else 0,
    frozen_bytes=per_device_bytes(program.abstract_frozen) if trains else 0,
    job=job,
    model_flops=config.global_batch_size
    * train_flops_per_example(job, cfg, cached_features=config.get("cache_features", False))
    if trains
    else 0.0,
  )
  if trains:
    try:
      compiled = lowered.compile()
    except Exception as error:  # XLA reports "out of memory" as a runtime error
      if not is_out_of_memory(error):
        raise
      report.fits, report.compile_error = False, first_lines(str(error))
    else:
      read_memory(report, compiled)
      cost, report.cost_source, counted, repeat = loop_free_cost(config, plan, devices, compiled)
      read_collectives(report, counted, repeat, mesh, chip)
      read_cost(report, cost, chip)
  if evaluations or not trains:
    plan_evaluations(report, config, plan, mesh, program)
  if not report.fits:
    report.suggestions = suggestions(report, plan)
  return report


def plan_evaluations(report: Report, config, plan, mesh, program) -> None:
  """Compiles the evaluation programs (`aot.evaluations`): their memory per
  device; the plan fits only if each of them fits too."""
  job = config.get("job", "pretrain")
  if program is None:
    found = evaluations.knn_job(config, plan, mesh)
  else:
    found = evaluations.BY_JOB[job](config, plan, mesh, program)
  for item in found:
    entry = {"name": item.name, "where": item.where, "total": None, "fits": True, "error": ""}
    try:
      memory = item.lowered.compile().memory_analysis()
    except Exception as error:
      if not is_out_of_memory(error):
        raise
      entry.update(fits=False, error=first_lines(str(error), 1))
    else:
      entry["total"] = sum(
        int(getattr(memory, f"{name}_size_in_bytes", 0) or 0)
        for name in ("argument", "output", "temp", "generated_code")
      ) - int(getattr(memory, "alias_size_in_bytes", 0) or 0)
      entry["fits"] = report.hbm_bytes is None or entry["total"] <= report.hbm_bytes
    report.evaluations.append(entry)
    report.fits = report.fits and entry["fits"]


# JAX on a GPU preallocates this share of the total CUDA reports and
# lives within it (XLA_PYTHON_CLIENT_PREALLOCATE=false only makes the
# allocation lazy): a plan must fit in that share. JAX's newer releases may
# grow the default pool towards 100 %, except for collective buffers; the
# pinned jaxlib 0.10.2's CUDA plugin has no such policy, so the fit is
# checked against the 75 %, and a plan above it is told what to set.
DEFAULT_GPU_MEMORY_FRACTION = 0.75
MEMORY_FRACTION_VARIABLES = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION")


def memory_limit_of(chip, hbm_bytes: int | None) -> tuple[int | None, str]:
  """(bytes a plan may use per device, where that figure comes from)."""
  if hbm_bytes:
    return hbm_bytes, "--hbm_gib"
  if chip is None:
    return None, ""
  if chip.gpu is None:
    return chip.hbm_bytes, "HBM"
  new, old = (os.environ.get(name, "") for name in MEMORY_FRACTION_VARIABLES)
  if new and old:
    raise UsageError(
      "XLA_CLIENT_MEM_FRACTION and XLA_PYTHON_CLIENT_MEM_FRACTION are both set (JAX refuses "
      "that): unset XLA_PYTHON_CLIENT_MEM_FRACTION, the deprecated name."
    )
  name = "XLA_CLIENT_MEM_FRACTION" if new else "XLA_PYTHON_CLIENT_MEM_FRACTION"
  text = new or old
  try:
    fraction = float(text) if text else DEFAULT_GPU_MEMORY_FRACTION
  except ValueError:
    fraction = -1.0
  if not 0 < fraction <= 1:
    raise UsageError(f"{name}={text!r}: expected a fraction in (0, 1], such as 0.9.")
  if not text:
    source = "JAX's default pool"
  elif old:
    source = f"{name}, the deprecated name of XLA_CLIENT_MEM_FRACTION"
  else:
    source = name
  total = chip.hbm_bytes
  return int(total * fraction), (
    f"{100 * fraction:.0f} % of the GPU's {gib(total)} ({chip.gpu.memory_source}), {source}"
  )


def step_program(config, plan, mesh):
  """The job's own step program (the builder its run calls, from the job
  table), for `mesh`: lowered with abstract (shape, dtype, sharding)
  arguments, nothing is allocated."""
  return jobs.resolve(jobs.job_of(config).program)(config, plan, mesh)


CUDNN_HINT = (
  "the cuDNN wheel in the plugin directory: .venv/bin/pip install --no-deps "
  "--target .venv/gpu-aot nvidia-cudnn-cu13 (about 900 MB installed)"
)


def cudnn_refusal(error: Exception) -> str:
  """Why attention_impl=cudnn could not be lowered, and what to do."""
  text = str(error).strip().splitlines()[0]
  if "not detected" in text or "not found" in text:
    return f"model.attention_impl='cudnn' needs cuDNN at compile time ({text}): {CUDNN_HINT}."
  return (
    f"model.attention_impl='cudnn': JAX's cuDNN attention refuses this model ({text}); "
    "in training it needs even sequence lengths, and MAE's are odd at most sizes "
    "(the decoder's 1 + 196 tokens at 224 px). Use model.attention_impl='xla'."
  )


def plan_without_data(config, devices):
  """The job's plan (`plan.make_plan`, `evaluate.plan.make_eval_plan`) for
  `devices`, with the dataset's size and classes looked up instead of read
  (the AOT machine has no dataset, and no checkpoint for init_from)."""
  job = jobs.job_of(config)
  key = (config.data.source, config.data.name or "")
  if key not in KNOWN_DATASETS and config.num_train_steps <= 0:
    raise UsageError(
      f"the AOT check does not read data, and the size of {key[0]}:{key[1]} is not "
      f"known to it ({sorted(KNOWN_DATASETS)}): set --config.num_train_steps."
    )
  size, classes = KNOWN_DATASETS.get(key, (config.global_batch_size, 1000))
  if config.get("num_classes", -1) > 0:
    classes = config.num_classes
  sizes = {config.data.train_split: size, config.data.eval_split: 0}
  hosts = len({device.process_index for device in devices})
  config = config.copy_and_resolve_references()
  if "knn_every_steps" in config:
    # The k-NN monitor needs the dataset's labels, which are not read here;
    # it runs outside the train step, so the check does without it (a
    # negative value is still refused).
    config.knn_every_steps = min(config.knn_every_steps, 0)
  # Everything else the job's plan checks (model, batch split, mesh) applies here.
  return jobs.resolve(job.plan)(
    config, num_devices=len(devices), process_count=hosts, known_dataset=(sizes, classes)
  )


def slices_per_axis(mesh) -> dict:
  """How many TPU slices one walks through along each mesh axis, read off the
  device grid (so it shows where the data-centre network is crossed)."""
  grid = np.vectorize(lambda d: getattr(d, "slice_index", 0), otypes=[int])(mesh.devices)
  return {
    axis: len(set(np.moveaxis(grid, i, 0).reshape(grid.shape[i], -1)[:, 0]))
    for i, axis in enumerate(mesh.axis_names)
  }


def describe_model(cfg) -> str:
  return (
    f"ViT width {cfg.width} depth {cfg.depth} patch {cfg.patch_size} at "
    f"{size_text(cfg.image_size)} px, decoder {cfg.decoder_width}x{cfg.decoder_depth}"
  )


def per_device_bytes(abstract) -> int:
  """Bytes of `abstract` arrays (each carrying its sharding) one device holds."""

  def shard_bytes(leaf):
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize

  return int(sum(shard_bytes(leaf) for leaf in jax.tree.leaves(abstract)))


def read_memory(report: Report, compiled) -> None:
  """Per-chip memory of the compiled step; `fits` against the limit."""
  memory = compiled.memory_analysis()
  parts = {
    name: int(getattr(memory, f"{name}_size_in_bytes", 0) or 0)
    for name in ("argument", "output", "alias", "temp", "generated_code")
  }
  # Donated state: its outputs reuse the argument buffers ("alias").
  parts["total"] = (
    parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] + parts["generated_code"]
  )
  report.memory = parts
  report.collectives = collectives.counts(
    collectives.collectives_of(compiled.as_text(), report.chips)
  )
  if report.hbm_bytes is not None and parts["total"] > report.hbm_bytes:
    report.fits = False


def loop_free_cost(config, plan, devices, compiled) -> tuple[dict, str, object, int]:
  """(FLOPs, bytes accessed and the compiler's time estimate of one step,
  where they come from, the compiled program they were counted on, how many
  times it runs per step).

  XLA's cost analysis counts a loop body once: with `scan_layers` (the
  layers in one loop) or gradient accumulation (a scan over micro-batches)
  the compiled step's counts shrink by the trip counts. So such a step is
  counted on its unrolled twin, the same job with `scan_layers` off at one
  micro-batch, compiled for the same devices, times `grad_accum_steps`
  (which counts the optimizer update that many times: a fraction of a
  percent of the step). Memory always comes from the real program."""
  accum = config.grad_accum_steps
  if not plan.model.scan_layers and accum == 1:
    return cost_of(compiled), "the compiled step", compiled, 1
  twin = config.copy_and_resolve_references()
  twin.model.scan_layers = False
  twin.grad_accum_steps = 1
  twin.global_batch_size = plan.micro_batch_size
  twin_plan = plan_without_data(twin, devices)
  twin_compiled = step_program(twin, twin_plan, twin_plan.make_mesh(devices)).lower().compile()
  cost = {key: value * accum for key, value in cost_of(twin_compiled).items()}
  return (
    cost,
    (
      f"its unrolled twin (scan_layers off, one micro-batch) x {accum}: XLA's cost "
      "analysis counts a loop body once"
    ),
    twin_compiled,
    accum,
  )


def read_collectives(report: Report, compiled, repeat: int, mesh, chip) -> None:
  """The collectives' bytes and time per link, per chip and step."""
  if chip is None:
    return
  homes = [
    getattr(d, "slice_index", 0) if chip.gpu is None else d.process_index for d in mesh.devices.flat
  ]
  found = collectives.collectives_of(compiled.as_text(), len(homes), len(set(homes)))
  near = collectives.Link(chip.near_link, chip.near_bytes_per_second)
  far = collectives.Link(chip.far_link, chip.far_bytes_per_second)
  report.collective_links = collectives.time_per_link(found, homes, near, far, repeat)
  report.collective_seconds = sum(v["seconds"] for v in report.collective_links.values())


def read_cost(report: Report, cost: dict, chip) -> None:
  """FLOPs and bytes per chip, the compute and memory times, the step time and MFU."""
  report.compiler_flops = float(cost.get("flops", 0.0)) or None
  report.bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
  if chip is None:
    return
  predicted = roofline(cost, chip, report.dtype, report.collective_seconds or 0.0)
  report.peak_flops, report.peak_label = predicted["peak_flops"], predicted["peak_label"]
  if report.compiler_flops:
    report.compute_seconds = predicted["compute_seconds"]
    report.memory_seconds = predicted["memory_seconds"]
  report.step_seconds = predicted.get("step_seconds")
  report.step_time_source = predicted.get("step_time_source", "")
  if report.step_seconds:
    report.mfu = report.model_flops / (report.chips * report.peak_flops * report.step_seconds)


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def first_lines(text: str, count: int = 3) -> str:
  return "\n".join(line for line in text.strip().splitlines()[:count])


def suggestions(report: Report, plan) -> list[str]:
  """The knobs that reduce per-chip memory, most effective first."""
  mesh, tips = report.mesh, []
  hbm = report.hbm_bytes or 0
  needed = (report.memory or {}).get("total", 0)
  if report.device_total_bytes and 0 < needed <= 0.95 * report.device_total_bytes:
    tips.append(
      f"give JAX's pool more of the GPU (the step needs {gib(needed)} of "
      f"{gib(report.device_total_bytes)}): XLA_CLIENT_MEM_FRACTION=0.95"
    )
  sharded_over = mesh["fsdp"] * mesh["tensor"]
  if sharded_over < report.chips and report.state_bytes > hbm / 8:
    tips.append(
      f"shard parameters and AdamW state over all chips (they take "
      f"{gib(report.state_bytes)} per chip now): --config.mesh.data=1 "
      f"--config.mesh.fsdp=-1"
    )
  if report.remat_policy != "full":
    tips.append("recompute activations in the backward pass: --config.model.remat_policy=full")
  if report.batch_per_chip > 1:
    accum = report.grad_accum_steps * 2
    if report.global_batch % (accum * plan.data_parallel) == 0:
      tips.append(
        f"halve the per-chip batch ({report.batch_per_chip:g} images) with the same "
        f"update: --config.grad_accum_steps={accum}"
      )
  if report.dtype == "float32":
    tips.append("compute in bfloat16 (weights stay float32): --config.model.dtype=bfloat16")
  if not tips:
    tips.append("use a larger slice (more chips) or a chip with more HBM")
  return tips
