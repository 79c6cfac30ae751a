r"""The accelerator check: one command, run whenever a GPU (or TPU) machine is at hand.

  python -m benchmarks.accelerator_check                     # ~5-7 minutes on one GPU
  python -m benchmarks.accelerator_check --out-dir $OUT      # where the JSON and Markdown go
  python -m benchmarks.accelerator_check --tiny              # CPU smoke test (tests)

What it does, in order (each part within a time budget, --budget-s):
  0. checks before anything runs: the packages it needs import, JAX sees an
     accelerator (not only the CPU), torch sees the same GPU; a missing piece
     stops it at once with what to install or set;
  1. the device's matmul rate in the step's dtype (bfloat16 by default),
     through XLA: an 8192^3 product chained 8 times inside one program, so
     dispatch does not count;
  2. transformers' PyTorch ViTMAE (forward, backward, AdamW) on the same GPU
     at the same per-chip batch, bfloat16 autocast, eager and torch.compile;
  3. the trainer's own pretraining step (`jobs.pretrain_step.build_pretraining_step`,
     AdamW, donated state) for ViT-B/16 and ViT-L/16 at 224 px at a
     realistic per-chip batch (256 and 128), data-parallel over every local
     device, once per attention implementation (`xla`, `cudnn`) side by
     side, each row in a fresh process (the allocator's peak is per
     process): compile time, images/s (median after warm-up), model FLOP/s,
     MFU against the matmul rate of step 1 (and the chip's nominal dense
     peak when known), peak memory per device; and beside each, what
     `mae_jax.aot` predicts for the same compiled step on this device kind
     (its roofline step time and MFU, the compiler's memory figure), so the
     first run on a GPU calibrates the plans;
  4. the ratios: mae_jax's best images/s per chip against torch.compile's
     and eager PyTorch's.

Writes accelerator_check.json and accelerator_check.md into --out-dir
(default: $OUT when set, else ./accelerator_check). torch runs before the
JAX steps and returns its memory; JAX does not preallocate the GPU here.
The check imports no ml_collections, TensorFlow or Grain (a test checks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import common
from mae_jax.core.units import gib
from mae_jax.model import flops  # plain Python: imports no jax

# Nominal dense (no sparsity) bfloat16 peaks, FLOP/s per chip, by the exact
# device kind JAX reports, from the vendors' datasheets. For context only:
# MFU is reported against the rate measured in step 1. A kind not listed
# has no nominal peak (said so in the report), never a neighbour's: "H100"
# alone would also match the PCIe and NVL cards, "L4" the L40S.
NOMINAL_BF16_PEAK = {
  "NVIDIA B200": 2250e12,
  "NVIDIA H200": 989e12,
  "NVIDIA H100 80GB HBM3": 989e12,  # SXM5
  "NVIDIA H100 NVL": 835e12,
  "NVIDIA H100 PCIe": 756e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "NVIDIA A100 80GB PCIe": 312e12,
  "NVIDIA A100-PCIE-40GB": 312e12,
  "NVIDIA L40S": 362e12,
  "NVIDIA L4": 121e12,
  "NVIDIA A10": 125e12,
  "TPU v6 lite": 918e12,
  "TPU v5": 459e12,  # v5p reports "TPU v5"
  "TPU v5 lite": 197e12,
  "TPU v4": 275e12,
}

FULL_MODELS = (("B/16", 256), ("L/16", 128))
TINY_FIELDS = {"preset": "tiny"}  # mae_jax.model.config.TINY, the tests' model


def nominal_peak(device_kind: str) -> float | None:
  """The nominal dense bf16 peak of exactly this device kind, or None."""
  exact = {name.lower(): peak for name, peak in NOMINAL_BF16_PEAK.items()}
  return exact.get(device_kind.strip().lower())


def allocator_peak(devices) -> float | None:
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats() or {}
    except Exception:  # CPU devices and some plugins have none
      stats = {}
    if "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
  return float(max(peaks)) if peaks else None


REQUIRED = ("jax", "flax", "optax", "orbax.checkpoint", "einops", "numpy")
TORCH_REQUIRED = ("torch", "transformers")
ATTENTION_IMPLS = ("xla", "cudnn")
TORCH_MODES = ("eager", "compile")


class CheckFailed(SystemExit):
  """A missing piece: the message says what to install or set."""

  def __init__(self, message: str):
    super().__init__(f"accelerator check: {message}")


def preflight(args) -> dict:
  """Fails fast, before any compile, on what would fail later."""
  import importlib

  def missing(names) -> list[str]:
    found = []
    for name in names:
      try:
        importlib.import_module(name)
      except Exception as error:  # ImportError, or a broken install
        found.append(f"{name} ({type(error).__name__}: {str(error).splitlines()[0][:120]})")
    return found

  def refuse(names: list[str]) -> None:
    if names:
      raise CheckFailed(
        "missing packages: " + "; ".join(names) + ". Install them (pip install ...), or "
        "pass --no-torch to skip the PyTorch comparison."
      )

  refuse(missing(REQUIRED))
  import jax

  # JAX's GPU backend starts before torch is imported: a torch wheel that
  # loads its own cuDNN first can leave JAX on the CPU.
  backend = jax.default_backend()
  refuse(missing(TORCH_REQUIRED if args.torch else ()))
  if backend == "cpu" and not (args.tiny or args.allow_cpu):
    raise CheckFailed(
      f"JAX sees no accelerator (devices: {jax.devices()}). On a GPU machine install "
      "jax with its CUDA plugin (e.g. jax[cuda13]) and check nvidia-smi; "
      "--allow-cpu runs the full sizes on the CPU anyway."
    )
  torch_device = None
  if args.torch:
    import torch

    if backend == "gpu":
      if not torch.cuda.is_available():
        raise CheckFailed(
          "JAX sees a GPU but torch does not (torch.cuda.is_available() is False): "
          "install a CUDA build of torch, or pass --no-torch."
        )
      torch_device = "cuda"
    elif backend == "cpu":
      torch_device = "cpu"
    else:  # a TPU: nothing to compare with here
      args.torch = False
  return {"backend": backend, "torch_device": torch_device}


def measure_model(
  label: str,
  fields: dict,
  per_chip_batch: int,
  *,
  dtype: str,
  attention: str,
  warmup: int,
  steps_count: int,
  matmul_rate: float,
  peak: float | None,
) -> dict:
  """One mae_jax row: the trainer's step with one attention implementation."""
  import jax

  from benchmarks import steps

  devices = jax.local_devices()
  batch = per_chip_batch * len(devices)
  mesh = {"data": len(devices), "fsdp": 1, "tensor": 1}
  row = {
    "framework": "mae_jax",
    "model": label,
    "attention": attention,
    "dtype": dtype,
    "devices": len(devices),
    "per_chip_batch": per_chip_batch,
    "process": os.getpid(),
  }
  try:
    # cuDNN attention refuses odd sequence lengths (197 tokens at 224 px):
    # the model's validation says so, and the row records it.
    cfg = steps.model_config(
      fields.get("preset"),
      **{k: v for k, v in fields.items() if k != "preset"},
      dtype=dtype,
      attention_impl=attention,
    )
    step = steps.MaeStep(cfg, batch, mesh=mesh)
  except Exception as error:  # e.g. cuDNN attention unavailable for this shape or chip
    return {**row, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
  timing = common.interleave({"step": step.run}, warmup=warmup, steps=steps_count)["step"]
  model_flops = flops.train_flops_per_image(step.cfg)
  images_per_s = batch / timing.median
  achieved = model_flops * images_per_s / len(devices)
  memory = step.memory()
  row.update(predicted(step, devices, dtype, model_flops * batch))
  row.update(
    compile_s=step.lower_s + step.compile_s,
    **timing.summary(batch),
    images_per_s_per_chip=images_per_s / len(devices),
    model_tflop_per_image=model_flops / 1e12,
    model_tflops_per_chip=achieved / 1e12,
    mfu_vs_measured_matmul=achieved / matmul_rate,
    mfu_vs_nominal_peak=achieved / peak if peak else None,
    peak_bytes_per_device=memory.get("peak_bytes"),
    allocator_peak_bytes=allocator_peak(devices),
    loss=step.last_loss,
  )
  step.close()
  return row


def measure_torch(
  label: str,
  fields: dict,
  per_chip_batch: int,
  *,
  dtype: str,
  mode: str,
  device: str,
  compile_backend: str,
  warmup: int,
  steps_count: int,
) -> dict:
  """One PyTorch row: transformers' ViTMAE on one device, eager or compiled."""
  from benchmarks import steps

  row = {
    "framework": "torch",
    "model": label,
    "attention": f"sdpa ({mode})",
    "dtype": dtype,
    "devices": 1,
    "per_chip_batch": per_chip_batch,
  }
  cfg = steps.model_config(
    fields.get("preset"), **{k: v for k, v in fields.items() if k != "preset"}
  )
  try:
    step = steps.TorchStep(
      cfg,
      per_chip_batch,
      dtype=dtype,
      device=device,
      compile_backend=compile_backend if mode == "compile" else None,
    )
    start = time.perf_counter()
    step.run()  # the first call compiles (torch.compile) or warms the allocator
    first_s = time.perf_counter() - start
    timing = common.interleave({"step": step.run}, warmup=warmup, steps=steps_count)["step"]
  except Exception as error:  # an out-of-memory, a compile failure
    return {**row, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
  row.update(
    compile_s=first_s,
    **timing.summary(per_chip_batch),
    images_per_s_per_chip=per_chip_batch / timing.median,
    peak_bytes_per_device=step.peak_bytes(),
    loss=step.last_loss,
  )
  step.close()
  return row


def predicted(step, devices, dtype: str, step_flops: float) -> dict:
  """mae_jax.aot's prediction for this compiled step on this device kind:
  the roofline step time and MFU (None for a kind the planner does not
  know, e.g. the CPU) and the compiler's memory figure (always)."""
  from mae_jax.aot import roofline, topologies

  out = {
    "predicted_step_s": None,
    "predicted_mfu": None,
    "predicted_memory_bytes": step.memory().get("peak_bytes"),
  }
  chip = topologies.chip_of_device_kind(devices[0].device_kind)
  if chip is None:
    return out
  estimate = roofline.roofline(roofline.cost_of(step.compiled), chip, dtype)
  seconds = estimate.get("step_seconds")
  if seconds:
    out["predicted_step_s"] = seconds
    out["predicted_mfu"] = step_flops / (len(devices) * estimate["peak_flops"] * seconds)
  return out


def measure_model_in_child(**kwargs) -> dict:
  """`measure_model` in a fresh process: the allocator's peak
  (`allocator_peak_bytes`) counts from process start, so in one process
  every row after the first would inherit the largest earlier peak."""
  command = [sys.executable, "-m", "benchmarks.accelerator_check", "--row", json.dumps(kwargs)]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=root)
  lines = result.stdout.strip().splitlines()
  if result.returncode or not lines:
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return {
      "framework": "mae_jax",
      "model": kwargs["label"],
      "attention": kwargs["attention"],
      "per_chip_batch": kwargs["per_chip_batch"],
      "error": f"row process exited {result.returncode}: {tail[0][:300]}",
    }
  return json.loads(lines[-1])


def ratios(rows: list[dict]) -> list[dict]:
  """Per model: mae_jax's best images/s per chip over each PyTorch mode's."""
  out = []
  for model in dict.fromkeys(row["model"] for row in rows):
    ok = [r for r in rows if r["model"] == model and "error" not in r and "skipped" not in r]
    ours = [r for r in ok if r["framework"] == "mae_jax"]
    if not ours:
      continue
    best = max(ours, key=lambda r: r["images_per_s_per_chip"])
    entry = {"model": model, "mae_jax_attention": best["attention"]}
    for mode in TORCH_MODES:
      theirs = [r for r in ok if r["framework"] == "torch" and r["attention"] == f"sdpa ({mode})"]
      if theirs:
        entry[f"vs_torch_{mode}"] = (
          best["images_per_s_per_chip"] / theirs[0]["images_per_s_per_chip"]
        )
    out.append(entry)
  return out


def _cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  return "n/a" if value is None else format(value, fmt)


def render(report: dict) -> str:
  """The report as Markdown: the matmul rate, one row per run, the ratios."""
  matmul = report["matmul"]
  lines = [
    f"# Accelerator check: {report['device']} x{report['device_count']} "
    f"({report['backend']}), {report['dtype']}",
    "",
    f"Matmul ({matmul['dtype']}, {matmul['size']}^3 x {matmul['chain']} chained): "
    f"{matmul['flops_per_s'] / 1e12:.1f} TFLOP/s"
    + (
      f" (nominal dense peak {report['nominal_peak'] / 1e12:.0f})"
      if report["nominal_peak"]
      else f" (no nominal peak known for device kind {report['device']!r})"
    )
    + f". Wall time {report['wall_s']:.0f} s.",
    "",
    "| framework | model | batch/chip | attention | img/s/chip | TFLOP/s/chip | "
    "MFU (measured matmul) | MFU (nominal) | peak memory/device | compile s | "
    "predicted step (measured) | predicted MFU | predicted memory |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in report["rows"]:
    head = f"| {row['framework']} | {row['model']} | {row['per_chip_batch']} | {row['attention']} |"
    problem = row.get("error") or row.get("skipped")
    if problem:
      lines.append(f"{head} {problem} | | | | | | | | |")
      continue
    mfu = row.get("mfu_vs_measured_matmul")
    nominal = row.get("mfu_vs_nominal_peak")
    lines.append(
      f"{head} {row['images_per_s_per_chip']:.1f} | {_cell(row, 'model_tflops_per_chip', '.1f')} | "
      f"{'n/a' if mfu is None else f'{100 * mfu:.0f} %'} | "
      f"{'n/a' if nominal is None else f'{100 * nominal:.0f} %'} | "
      f"{gib(row.get('peak_bytes_per_device'))} | {row['compile_s']:.0f} | " + _prediction(row)
    )
  if report["ratios"]:
    lines += [
      "",
      "| model | mae_jax attention | vs torch.compile | vs eager PyTorch |",
      "|---|---|---|---|",
    ]
    for entry in report["ratios"]:
      compiled, eager = entry.get("vs_torch_compile"), entry.get("vs_torch_eager")
      lines.append(
        f"| {entry['model']} | {entry['mae_jax_attention']} | "
        f"{'n/a' if compiled is None else f'{compiled:.2f}x'} | "
        f"{'n/a' if eager is None else f'{eager:.2f}x'} |"
      )
  return "\n".join(lines) + "\n"


def _prediction(row: dict) -> str:
  """The aot columns: predicted step (measured median), MFU, memory."""
  if row["framework"] != "mae_jax":
    return "| | |"
  step, mfu = row.get("predicted_step_s"), row.get("predicted_mfu")
  measured = row.get("median_s")
  step_text = "n/a (device kind unknown to the planner)"
  if step:
    step_text = f"{1e3 * step:.1f} ms" + (f" ({1e3 * measured:.1f} ms)" if measured else "")
  mfu_text = "n/a" if mfu is None else f"{100 * mfu:.0f} %"
  return f"{step_text} | {mfu_text} | {gib(row.get('predicted_memory_bytes'))} |"


def parse_args(argv):
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.accelerator_check",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU smoke test")
  parser.add_argument("--allow-cpu", action="store_true", help="full sizes even on a CPU")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument(
    "--models", default="", help="PRESET:PER_CHIP_BATCH,... (default B/16:256,L/16:128)"
  )
  parser.add_argument(
    "--attention", default="auto", help="auto (xla and, on GPUs, cudnn) | xla | cudnn | xla,cudnn"
  )
  parser.add_argument("--no-torch", dest="torch", action="store_false", help="skip PyTorch")
  parser.add_argument(
    "--torch-compile-backend",
    default="inductor",
    help="torch.compile backend (the CPU tests use 'eager', which only checks the path)",
  )
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--torch-steps", type=int, default=10)
  parser.add_argument("--matmul-size", type=int, default=8192)
  parser.add_argument("--matmul-chain", type=int, default=8)
  parser.add_argument(
    "--budget-s", type=float, default=420.0, help="rows not started by then are skipped"
  )
  parser.add_argument("--out-dir", default="")
  parser.add_argument("--row", default="", help=argparse.SUPPRESS)  # one row, in a child
  return parser.parse_args(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  # torch and JAX share the GPU: JAX allocates as it goes instead of taking
  # 75 % of the memory up front.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.row:  # a child of measure_model_in_child: one row, as JSON
    row = measure_model(**json.loads(args.row))
    print(json.dumps(row, default=str))
    return row
  start = time.perf_counter()
  environment = preflight(args)
  import jax

  from benchmarks import steps

  if args.tiny:
    models = [("tiny", dict(TINY_FIELDS), 2)]
    args.matmul_size, args.matmul_chain = 256, 2
    args.warmup, args.steps, args.torch_steps = 1, 2, 2
  elif args.models:
    models = []
    for item in args.models.split(","):
      name, _, batch = item.partition(":")
      models.append((name, {"preset": name}, int(batch)))
  else:
    models = [(name, {"preset": name}, batch) for name, batch in FULL_MODELS]
  if args.attention == "auto":
    impls = list(ATTENTION_IMPLS) if environment["backend"] == "gpu" else ["xla"]
  else:
    impls = args.attention.split(",")
  device = jax.local_devices()[0]
  peak = nominal_peak(device.device_kind)
  matmul = steps.matmul_rate(args.dtype, args.matmul_size, chain=args.matmul_chain, repeats=5)
  print(f"matmul {args.dtype}: {matmul['flops_per_s'] / 1e12:.2f} TFLOP/s", flush=True)

  def over_budget() -> bool:
    return time.perf_counter() - start > args.budget_s

  rows: list[dict] = []
  for label, fields, batch in models:  # PyTorch first: it hands its memory back
    for mode in TORCH_MODES if args.torch else ():
      if over_budget():
        rows.append(
          dict(
            framework="torch",
            model=label,
            attention=f"sdpa ({mode})",
            per_chip_batch=batch,
            skipped="skipped: time budget",
          )
        )
        continue
      rows.append(
        measure_torch(
          label,
          fields,
          batch,
          dtype=args.dtype,
          mode=mode,
          device=environment["torch_device"],
          compile_backend=args.torch_compile_backend,
          warmup=min(args.warmup, 2),
          steps_count=args.torch_steps,
        )
      )
      print(_progress(rows[-1]), flush=True)
  for label, fields, batch in models:
    for impl in impls:
      if over_budget():
        rows.append(
          dict(
            framework="mae_jax",
            model=label,
            attention=impl,
            per_chip_batch=batch,
            skipped="skipped: time budget",
          )
        )
        continue
      rows.append(
        measure_model_in_child(
          label=label,
          fields=fields,
          per_chip_batch=batch,
          dtype=args.dtype,
          attention=impl,
          warmup=args.warmup,
          steps_count=args.steps,
          matmul_rate=matmul["flops_per_s"],
          peak=peak,
        )
      )
      print(_progress(rows[-1]), flush=True)
  report: dict[str, Any] = {
    "device": device.device_kind,
    "backend": environment["backend"],
    "device_count": len(jax.local_devices()),
    "dtype": args.dtype,
    "nominal_peak": peak,
    "matmul": matmul,
    "versions": common.versions(),
    "rows": rows,
    "ratios": ratios(rows),
    "wall_s": time.perf_counter() - start,
  }
  markdown = render(report)
  print(markdown)
  out_dir = args.out_dir or os.environ.get("OUT") or "accelerator_check"
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "accelerator_check.json"), "w") as f:
    json.dump(report, f, indent=1, default=str)
  with open(os.path.join(out_dir, "accelerator_check.md"), "w") as f:
    f.write(markdown)
  print(f"wrote {out_dir}/accelerator_check.json and accelerator_check.md")
  return report


def _progress(row: dict) -> str:
  what = f"{row['framework']} {row['model']} ({row['attention']})"
  if "error" in row or "skipped" in row:
    return f"{what}: {row.get('error') or row.get('skipped')}"
  mfu = row.get("mfu_vs_measured_matmul")
  return f"{what}: {row['images_per_s_per_chip']:.1f} img/s/chip" + (
    f", MFU {100 * mfu:.0f} % of the measured matmul rate" if mfu else ""
  )


if __name__ == "__main__":
  main()
