"""The plan as text: memory, FLOPs, predicted step time, verdict and the knobs to turn."""

from __future__ import annotations

from mae_jax.aot.planner import Report
from mae_jax.core.units import gib


def recomputed_fraction(r: Report) -> float:
  """Compiled FLOPs over the model's, minus 1: what remat (asked for, or done
  by XLA:TPU on its own to fit HBM) costs. A few % is the optimizer and
  elementwise work."""
  if not r.compiler_flops or not r.model_flops:
    return 0.0
  return r.compiler_flops * r.chips / r.model_flops - 1


def format_report(r: Report) -> str:
  mesh = " ".join(f"{axis}={size}" for axis, size in r.mesh.items())
  across = {axis: n for axis, n in r.slices_per_axis.items() if n > 1}
  if across:
    mesh += " (across slices: " + " ".join(f"{a}={n}" for a, n in across.items()) + ")"
  hbm = gib(r.hbm_bytes) if r.hbm_bytes else "no limit known"
  if r.memory_note == "HBM":
    hbm += " HBM"
  elif r.memory_note:
    hbm += f" usable ({r.memory_note})"
  trains = bool(r.params)  # the k-NN job trains nothing: its programs only
  lines = [
    f"AOT plan of the {r.job} {'step' if trains else 'programs'} on {r.topology} "
    f"({r.accelerator_type}: {r.chips} {r.device_noun}, {r.hosts} hosts)",
    f"  model            {r.model}"
    + (f", {r.params / 1e6:.1f}M parameters" if trains else "")
    + f", {r.dtype}, remat {r.remat_policy}",
    f"  mesh             {mesh}",
  ]
  if trains:
    lines += [
      f"  batch            {r.global_batch} global, {r.batch_per_chip:g} per chip per "
      f"micro-batch, grad_accum_steps {r.grad_accum_steps}",
      f"  state per chip   {gib(r.state_bytes)} (trained parameters + optimizer moments)",
    ]
  else:
    lines.append(f"  memory limit     {hbm} per device")
  if r.frozen_bytes:
    lines.append(f"  frozen per chip  {gib(r.frozen_bytes)} (the frozen encoder's parameters)")
  if r.memory:
    m = r.memory
    lines.append(
      f"  memory per chip  {gib(m['total'])} of {hbm}: arguments {gib(m['argument'])}, "
      f"temporaries {gib(m['temp'])}, outputs {gib(m['output'] - m['alias'])}, "
      f"code {gib(m['generated_code'])}"
    )
  if r.compile_error:
    lines.append(f"  compiler         {r.compile_error}")
  if r.compiler_flops:
    lines.append(
      f"  FLOPs per step   {r.compiler_flops * r.chips:.3e} compiled "
      f"({r.compiler_flops:.3e} per chip, recomputation included; from "
      f"{r.cost_source}), "
      f"{r.model_flops:.3e} model"
    )
  if r.collectives:
    lines.append("  collectives      " + ", ".join(f"{op} x{n}" for op, n in r.collectives.items()))
  if r.compute_seconds:
    lines.append(
      f"  compute time     {r.compute_seconds * 1e3:.1f} ms (compiled FLOPs per chip / "
      f"{r.peak_flops / 1e12:.0f} TFLOP/s, the {r.peak_label} peak)"
    )
    lines.append(
      f"  memory time      {r.memory_seconds * 1e3:.1f} ms (bytes accessed per chip / HBM "
      "bandwidth)"
    )
  if r.collective_seconds is not None:
    links = "; ".join(
      f"{name} {v['count']:g} x, {v['bytes'] / 1e9:.3g} GB at {v['bandwidth'] / 1e9:.0f} GB/s "
      f"= {v['seconds'] * 1e3:.1f} ms"
      for name, v in r.collective_links.items()
    )
    lines.append(
      f"  collective time  {r.collective_seconds * 1e3:.1f} ms per chip"
      + (f" ({links}; ring algorithms, no latency)" if links else " (none)")
    )
  if r.step_seconds:
    lines.append(
      f"  step time        {r.step_seconds * 1e3:.1f} ms predicted (not measured) by "
      f"{r.step_time_source}"
    )
    lines.append(
      f"  implied MFU      {100 * r.mfu:.1f} % (model FLOPs / (chips x {r.peak_label} peak "
      f"x estimated step time))"
    )
  extra = recomputed_fraction(r)
  if extra > 0.05:
    lines.append(
      f"  note             the compiled step does {100 * extra:.0f} % more FLOPs than "
      "the model: XLA recomputes activations to fit, little headroom is left"
    )
  for entry in r.evaluations:
    size = gib(entry["total"]) if entry["total"] is not None else entry["error"]
    verdict = "fits" if entry["fits"] else "DOES NOT FIT"
    lines.append(
      f"  eval program     {entry['name']}: {size} per device ({entry['where']}), {verdict}"
    )
  lines.append("  verdict          " + ("fits" if r.fits else "DOES NOT FIT"))
  lines.extend(f"  try: {tip}" for tip in r.suggestions)
  return "\n".join(lines)
