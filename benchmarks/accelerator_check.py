r"""The accelerator check: run this whenever a GPU (or TPU) machine is at hand.

  python -m benchmarks.accelerator_check                   # ~3-5 minutes on one GPU
  python -m benchmarks.accelerator_check --out $OUT/accelerator_check.json
  python -m benchmarks.accelerator_check --tiny            # CPU smoke test (tests)

What it does, in order:
  1. the device's matmul rate in the step's dtype (bfloat16 by default),
     through XLA: an 8192^3 product chained 8 times inside one program, so
     dispatch does not count;
  2. the real pretraining step (`mae_jax.train.step.make_train_step`, AdamW,
     donated state) for ViT-B/16 and ViT-L/16 at 224 px at a realistic
     per-chip batch (256 and 128), data-parallel over every local device:
     compile time, images/s (median of the timed steps after warm-up), model
     FLOP/s, MFU against the matmul rate of step 1 (and against the chip's
     nominal dense peak when the chip is known), and peak memory per device
     (XLA's memory analysis, and the allocator's own peak when it has one).

Attention: "auto" tries cuDNN's fused attention on GPUs and falls back to
the XLA path when it does not compile; the report says which ran. Results are
printed as a table and written as JSON (`--out`, default
$OUT/accelerator_check.json when $OUT is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from benchmarks import common

# Nominal dense bfloat16 peaks (FLOP/s per chip), for context only: MFU is
# reported against the rate measured in step 1.
NOMINAL_BF16_PEAK = {
  "H200": 989e12,
  "H100": 989e12,
  "A100": 312e12,
  "L4": 121e12,
  "A10": 125e12,
  "TPU v5p": 459e12,
  "TPU v5 lite": 197e12,
  "TPU v4": 275e12,
  "TPU v6 lite": 918e12,
}

FULL_MODELS = (("B/16", 256), ("L/16", 128))
TINY_FIELDS = dict(
  image_size=32,
  patch_size=8,
  width=32,
  depth=2,
  heads=2,
  decoder_width=32,
  decoder_depth=1,
  decoder_heads=2,
)


def nominal_peak(device_kind: str) -> float | None:
  for name, peak in NOMINAL_BF16_PEAK.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


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
  import jax

  from benchmarks import steps

  devices = jax.local_devices()
  batch = per_chip_batch * len(devices)
  mesh = {"data": len(devices), "fsdp": 1, "tensor": 1}
  candidates = {"auto": (["cudnn", "xla"] if jax.default_backend() == "gpu" else ["xla"])}
  tried = []
  step = None
  for impl in candidates.get(attention, [attention]):
    cfg = steps.model_config(
      fields.get("preset"),
      **{k: v for k, v in fields.items() if k != "preset"},
      dtype=dtype,
      attention_impl=impl,
    )
    try:
      step = steps.MaeStep(cfg, batch, mesh=mesh)
      break
    except Exception as error:  # e.g. cuDNN attention unavailable for this shape
      tried.append(f"{impl}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
  if step is None:
    raise RuntimeError(f"{label}: no attention implementation compiled: {tried}")
  timing = common.interleave({"step": step.run}, warmup=warmup, steps=steps_count)["step"]
  model_flops = common.train_flops_per_image(step.cfg)
  images_per_s = batch / timing.median
  achieved = model_flops * images_per_s / len(devices)
  memory = step.memory()
  result = {
    "model": label,
    "attention": step.cfg.attention_impl,
    "attention_fallbacks": tried,
    "dtype": dtype,
    "devices": len(devices),
    "per_chip_batch": per_chip_batch,
    "compile_s": step.lower_s + step.compile_s,
    **timing.summary(batch),
    "model_tflop_per_image": model_flops / 1e12,
    "model_tflops_per_chip": achieved / 1e12,
    "mfu_vs_measured_matmul": achieved / matmul_rate,
    "mfu_vs_nominal_peak": achieved / peak if peak else None,
    "xla_peak_bytes_per_device": memory.get("peak_bytes"),
    "allocator_peak_bytes": allocator_peak(devices),
    "loss": step.last_loss,
  }
  step.close()
  return result


def render(report: dict) -> str:
  lines = [
    f"device: {report['device']}  backend: {report['backend']}  (x{report['device_count']})",
    f"matmul ({report['matmul']['dtype']}, {report['matmul']['size']}^3 x"
    f"{report['matmul']['chain']}): {report['matmul']['flops_per_s'] / 1e12:.1f} TFLOP/s"
    + (f"  (nominal peak {report['nominal_peak'] / 1e12:.0f})" if report["nominal_peak"] else ""),
    "| model | batch/chip | attention | img/s | TFLOP/s/chip | MFU (measured matmul) | "
    "MFU (nominal) | peak memory/device | compile s |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in report["models"]:
    nominal = row["mfu_vs_nominal_peak"]
    lines.append(
      f"| {row['model']} | {row['per_chip_batch']} | {row['attention']} | "
      f"{row['images_per_s']:.1f} | {row['model_tflops_per_chip']:.1f} | "
      f"{100 * row['mfu_vs_measured_matmul']:.0f} % | "
      f"{'n/a' if nominal is None else f'{100 * nominal:.0f} %'} | "
      f"{common.gib(row['xla_peak_bytes_per_device'])} | {row['compile_s']:.0f} |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.accelerator_check",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU smoke test")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument(
    "--models", default="", help="PRESET:PER_CHIP_BATCH,... (default B/16:256,L/16:128)"
  )
  parser.add_argument("--attention", default="auto", help="auto | xla | cudnn")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--matmul-size", type=int, default=8192)
  parser.add_argument("--matmul-chain", type=int, default=8)
  parser.add_argument("--out", default="")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  import jax

  from benchmarks import steps

  start = time.perf_counter()
  if args.tiny:
    models = [("tiny", dict(TINY_FIELDS), 2)]
    args.matmul_size, args.matmul_chain = 256, 2
    args.warmup, args.steps = 1, 2
  elif args.models:
    models = []
    for item in args.models.split(","):
      name, _, batch = item.partition(":")
      models.append((name, {"preset": name}, int(batch)))
  else:
    models = [(name, {"preset": name}, batch) for name, batch in FULL_MODELS]
  device = jax.local_devices()[0]
  peak = nominal_peak(device.device_kind)
  matmul = steps.matmul_rate(args.dtype, args.matmul_size, chain=args.matmul_chain, repeats=5)
  print(f"matmul {args.dtype}: {matmul['flops_per_s'] / 1e12:.2f} TFLOP/s", flush=True)
  report: dict[str, Any] = {
    "device": device.device_kind,
    "backend": jax.default_backend(),
    "device_count": len(jax.local_devices()),
    "nominal_peak": peak,
    "matmul": matmul,
    "versions": common.versions(),
    "models": [],
  }
  for label, fields, batch in models:
    row = measure_model(
      label,
      fields,
      batch,
      dtype=args.dtype,
      attention=args.attention,
      warmup=args.warmup,
      steps_count=args.steps,
      matmul_rate=matmul["flops_per_s"],
      peak=peak,
    )
    print(
      f"{label}: {row['images_per_s']:.1f} img/s, MFU {100 * row['mfu_vs_measured_matmul']:.0f} % "
      f"of the measured matmul rate ({row['attention']} attention)",
      flush=True,
    )
    report["models"].append(row)
  report["wall_s"] = time.perf_counter() - start
  print(render(report))
  out = args.out or (
    os.path.join(os.environ["OUT"], "accelerator_check.json") if os.environ.get("OUT") else ""
  )
  if out:
    with open(out, "w") as f:
      json.dump(report, f, indent=1, default=str)
    print(f"wrote {out}")
  return report


if __name__ == "__main__":
  main()
