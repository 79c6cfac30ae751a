"""Pieces shared by the benchmarks: threads, machine facts, timing, FLOPs.

Nothing here imports JAX or torch at module level: `limit_cpus` must run
before either creates its thread pools.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import time
from typing import Callable, Sequence

# Targets of the performance issue (2-core CPU, float32, same-run ratios):
# the harness measures against them and the report prints them.
TARGET_TORCH_RATIO, AIM_TORCH_RATIO = 1.0, 1.2
TARGET_PEAK_FRACTION = 0.70
TARGET_MASK_TOKEN_SPEEDUP = 3.0
TARGET_IMAGES_PER_CORE = 700.0  # issue 11: twice the tf.data pipeline it replaced
TARGET_INPUT_WAIT = 0.05

# Packages whose versions every report names.
VERSIONED_PACKAGES = (
  "jax",
  "jaxlib",
  "flax",
  "optax",
  "numpy",
  "torch",
  "transformers",
  "grain",
  "simplejpeg",
  "tensorflow-datasets",
)


# --------------------------------------------------------------- threads --


def limit_cpus(count: int | None) -> int:
  """Restricts this process to its first `count` CPUs; returns the CPUs kept.

  XLA's CPU client has no thread-count knob: its intra-op pool is sized to
  the CPUs in the process's affinity mask when the backend starts. So the
  mask is the one setting that gives XLA and torch the same thread count
  (`configure_torch_threads` then sets torch to the same number). Call it
  before JAX initialises its backend.
  """
  cpus = sorted(os.sched_getaffinity(0))
  if count and 0 < count < len(cpus):
    os.sched_setaffinity(0, cpus[:count])
  return len(os.sched_getaffinity(0))


def configure_torch_threads(count: int) -> dict:
  import torch

  torch.set_num_threads(count)
  return {
    "torch_intra_op_threads": torch.get_num_threads(),
    "torch_interop_threads": torch.get_num_interop_threads(),
  }


def thread_report(torch_threads: dict | None = None) -> dict:
  report = {
    "cpus_in_affinity_mask": len(os.sched_getaffinity(0)),
    "xla_cpu_intra_op_threads": len(os.sched_getaffinity(0)),
    "xla_note": "XLA CPU sizes its intra-op pool to the affinity mask (no separate knob)",
  }
  report.update(torch_threads or {})
  return report


# --------------------------------------------------------------- machine --


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
  wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return [flag for flag in wanted if flag in flags]
  except OSError:
    pass
  return []


def _memory_gib() -> float | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return None


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in VERSIONED_PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def load_average() -> tuple[float, float, float]:
  return tuple(round(x, 2) for x in os.getloadavg())


def machine_report() -> dict:
  import jax

  devices = jax.devices()
  return {
    "cpu": _cpu_model(),
    "cpu_flags": _cpu_flags(),
    "logical_cpus": os.cpu_count(),
    "memory_gib": round(_memory_gib() or 0.0, 1),
    "os": platform.platform(),
    "backend": jax.default_backend(),
    "devices": f"{len(devices)} x {devices[0].device_kind}",
    "env": {
      key: value
      for key, value in sorted(os.environ.items())
      if key.startswith(("OPENBLAS", "OMP_", "MKL_", "XLA_FLAGS", "TF_ENABLE_ONEDNN"))
    },
    "versions": versions(),
  }


# ---------------------------------------------------------------- timing --


@dataclasses.dataclass
class Timing:
  """Per-step wall times (seconds) of one contestant."""

  seconds: list[float]

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  def quantile(self, q: float) -> float:
    ordered = sorted(self.seconds)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

  def summary(self, batch: int) -> dict:
    return {
      "steps": len(self.seconds),
      "median_s": self.median,
      "p10_s": self.quantile(0.1),
      "p90_s": self.quantile(0.9),
      "images_per_s": batch / self.median,
    }


def interleave(
  contestants: dict[str, Callable[[], float]], *, warmup: int, steps: int
) -> dict[str, Timing]:
  """Runs A, B, A, B, ... (each call one step, returning its seconds).

  Warm-up rounds run first and are discarded. Interleaving keeps same-run
  ratios meaningful on a machine whose load drifts.
  """
  for _ in range(warmup):
    for run in contestants.values():
      run()
  times: dict[str, list[float]] = {name: [] for name in contestants}
  for _ in range(steps):
    for name, run in contestants.items():
      times[name].append(run())
  return {name: Timing(values) for name, values in times.items()}


def timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# ----------------------------------------------------------------- misc ---


def parse_mesh(text: str | None) -> dict[str, int]:
  """'data=2,fsdp=1' -> {'data': 2, 'fsdp': 1}; empty -> one device."""
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  for item in (text or "").split(","):
    if item.strip():
      key, _, value = item.partition("=")
      if key.strip() not in mesh:
        raise ValueError(f"mesh axis {key!r} is unknown: use data, fsdp, tensor")
      mesh[key.strip()] = int(value)
  return mesh


def fmt(value: float | None, digits: int = 2) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def shortfall(measured: float | None, target: float) -> str:
  """'met' or 'missed by X %' (relative to the target)."""
  if measured is None:
    return "not measured"
  if measured >= target:
    return "met"
  return f"missed by {100 * (1 - measured / target):.0f} %"


def median(values: Sequence[float]) -> float:
  return statistics.median(values)
