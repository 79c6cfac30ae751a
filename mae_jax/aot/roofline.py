"""The predicted step of a compiled program on a chip: its cost, the peak
of the dtype that runs, and the roofline of compute, memory and collectives.

Plain arithmetic over a compiled program's cost analysis, shared by the AOT
planner and `benchmarks/accelerator_check.py` (which puts the prediction
beside what it measures on the same device); it imports no configs, data
or jobs.
"""

from __future__ import annotations


def cost_of(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return dict(cost) if cost else module_cost(compiled)


def peak_of(chip, dtype: str) -> tuple[float, str]:
  """(matmul peak per chip for the compute dtype, its name). A GPU runs
  float32 matmuls as TF32 on its tensor cores, at half the bf16 rate; a TPU
  runs them as bfloat16 passes (JAX's default precision), at the bf16 rate."""
  if dtype == "float32" and chip.gpu is not None:
    return chip.peak_bf16_flops / 2, "TF32 (float32 on tensor cores, half of bf16)"
  return chip.peak_bf16_flops, "bf16"


def roofline(cost: dict, chip, dtype: str, collective_seconds: float = 0.0) -> dict:
  """The predicted step of a compiled program on `chip` from its cost
  analysis: compute, memory and collective times and the step time, with
  what bounds it. XLA:TPU's own estimate wins when it gives one (it can be
  missing or negative: seen -425 s for ViT-B on v5e)."""
  peak, label = peak_of(chip, dtype)
  flops = float(cost.get("flops", 0.0))
  times = {
    "compute": flops / peak,
    "HBM traffic": float(cost.get("bytes accessed", 0.0)) / chip.hbm_bytes_per_second,
    "collectives": collective_seconds,
  }
  out = {
    "peak_flops": peak,
    "peak_label": label,
    "compute_seconds": times["compute"],
    "memory_seconds": times["HBM traffic"],
  }
  optimal = float(cost.get("optimal_seconds", 0.0))
  if optimal > 0:
    out["step_seconds"] = optimal
    out["step_time_source"] = "the compiler's cost model (cost_analysis 'optimal_seconds')"
  elif flops:
    bound = max(times, key=times.get)
    out["step_seconds"] = times[bound]
    out["step_time_source"] = (
      f"a roofline, {bound}-bound: the largest of the compute, memory and collective "
      "times per chip (each assumed to hide the others)"
    )
  return out


def module_cost(compiled) -> dict:
  """FLOPs and bytes accessed of the compiled per-device program, where the
  compiler's own cost analysis has none (XLA:GPU in jaxlib 0.10 returns None):
  XLA's HLO cost analysis run by the CPU client over the optimised module
  (its fusions, cuBLAS calls and remat recomputation as compiled)."""
  import jax
  from jax._src.lib import xla_client

  modules = compiled.runtime_executable().hlo_modules()
  cpu = jax.devices("cpu")[0].client
  return dict(xla_client._xla.hlo_module_cost_analysis(cpu, modules[0]))
