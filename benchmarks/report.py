"""Renders the standard set's results as BENCHMARKS.md."""

from __future__ import annotations

from benchmarks import common
from mae_jax.core.units import gib


def _peak(results: dict) -> float:
  """The matmul peak: the better of the measurements before and after."""
  return max(results["matmul_before"]["flops_per_s"], results["matmul_after"]["flops_per_s"])


def _gflops(value: float | None) -> str:
  return "n/a" if value is None else f"{value / 1e9:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return lines


def _load(load) -> str:
  """A load-average triple, the same whether it came as a tuple or from JSON."""
  return "(" + ", ".join(f"{value:.2f}" for value in load) + ")"


def _xla_text(row: dict) -> str:
  xla = row.get("xla_gflop_per_image")
  if row.get("config", {}).get("scan_layers"):
    return "n/a (scan: XLA counts the loop body once)"
  return "n/a" if not xla else f"{xla:.1f} ({xla / row['model_gflop_per_image']:.2f}x)"


def _step_cells(row: dict, peak: float) -> list[str]:
  xla_text = _xla_text(row)
  return [
    f"{row['images_per_s']:.2f}",
    f"{1e3 * row['median_s']:.0f} ({1e3 * row['p10_s']:.0f}-{1e3 * row['p90_s']:.0f})",
    f"{row['compile_s']:.1f}",
    f"{row['model_gflop_per_image']:.1f}",
    xla_text,
    _gflops(row["model_flops_per_s"]),
    f"{100 * row['model_flops_per_s'] / peak:.0f} %",
    gib(row.get("peak_bytes")),
  ]


STEP_HEADER = [
  "img/s (median)",
  "step ms (p10-p90)",
  "compile s",
  "model GFLOP/img",
  "XLA GFLOP/img (vs model)",
  "model GFLOP/s",
  "of matmul peak",
  "peak memory/device",
]


def targets(results: dict) -> list[list[str]]:
  peak = _peak(results)
  rows = []
  for row in results["compare"]:
    rows.append(
      [
        f"mae_jax / PyTorch ViTMAE, {row['label']} batch {row['batch']}",
        f"{row['ratio']:.2f}x",
        f">= {common.TARGET_TORCH_RATIO:.1f}x (aim {common.AIM_TORCH_RATIO:.1f}x)",
        common.shortfall(row["ratio"], common.TARGET_TORCH_RATIO)
        + (
          ""
          if row["ratio"] < common.TARGET_TORCH_RATIO
          else (
            ", aim met"
            if row["ratio"] >= common.AIM_TORCH_RATIO
            else f", aim missed by {100 * (1 - row['ratio'] / common.AIM_TORCH_RATIO):.0f} %"
          )
        ),
      ]
    )
  base = [row for row in results["compare"] if row["label"].startswith("B/16")] or results[
    "compare"
  ][-1:]
  for row in base:
    fraction = row["model_flops_per_s"] / peak
    rows.append(
      [
        f"{row['label']} step FLOP/s / fp32 matmul peak",
        f"{100 * fraction:.0f} %",
        f">= {100 * common.TARGET_PEAK_FRACTION:.0f} %",
        "met"
        if fraction >= common.TARGET_PEAK_FRACTION
        else f"missed by {100 * (common.TARGET_PEAK_FRACTION - fraction):.0f} points",
      ]
    )
  for row in results["mask_tokens"]:
    rows.append(
      [
        f"visible-only / w/ [M] encoder, {row['label']} batch {row['batch']}",
        f"{row['speedup']:.2f}x",
        f">= {common.TARGET_MASK_TOKEN_SPEEDUP:.0f}x"
        if row["label"].startswith("L/16")
        else "(for reference)",
        common.shortfall(row["speedup"], common.TARGET_MASK_TOKEN_SPEEDUP)
        if row["label"].startswith("L/16")
        else "-",
      ]
    )
  per_core = results["input"]["one_core"]["images_per_s"]
  rows.append(
    [
      "input pipeline: JPEG decode + RandomResizedCrop + flip at 224 px, one core",
      f"{per_core:.0f} img/s",
      f">= {common.TARGET_IMAGES_PER_CORE:.0f} img/s",
      common.shortfall(per_core, common.TARGET_IMAGES_PER_CORE),
    ]
  )
  wait = results["digits"]["input_wait_fraction"]
  rows.append(
    [
      "time the digits train loop waits for input",
      f"{100 * wait:.2f} %",
      f"< {100 * common.TARGET_INPUT_WAIT:.0f} %",
      "met"
      if wait < common.TARGET_INPUT_WAIT
      else f"missed by {100 * (wait - common.TARGET_INPUT_WAIT):.1f} points",
    ]
  )
  aot = results.get("aot") or {}
  if isinstance(aot, dict) and aot.get("mfu") is not None:
    rows.append(
      [
        f"{aot_label(aot)}: predicted MFU (AOT cost analysis)",
        f"{100 * aot['mfu']:.0f} %",
        "reported",
        "reported (a prediction, not measured)",
      ]
    )
  else:
    rows.append(
      [
        "ViT-L/16 on a v5p slice, predicted MFU (AOT cost analysis)",
        "-",
        "reported",
        "see mae_jax.aot",
      ]
    )
  rows.append(
    [
      "GPU bfloat16 MFU (benchmarks/accelerator_check.py)",
      "not measured",
      ">= 50 %",
      "not measured (no GPU in this run)",
    ]
  )
  return rows


def _machine(results: dict) -> list[str]:
  lines: list[str] = []
  machine, threads, peak = results["machine"], results["threads"], _peak(results)
  lines += ["## Machine", ""]
  lines += _table(
    ["", ""],
    [
      ["started", results["started"]],
      [
        "1/5/15-min load average before / after",
        f"{_load(results['load_before'])} / {_load(results['load_after'])}",
      ],
      [
        "CPU",
        f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
        f"{', '.join(machine['cpu_flags'])}",
      ],
      ["memory", f"{machine['memory_gib']} GiB"],
      ["JAX backend", f"{machine['backend']}: {machine['devices']}"],
      [
        "threads",
        f"XLA CPU intra-op pool {threads['xla_cpu_intra_op_threads']} "
        f"(= CPUs in the affinity mask; XLA has no thread knob), torch intra-op "
        f"{threads.get('torch_intra_op_threads')} (`torch.set_num_threads`), "
        f"torch inter-op {threads.get('torch_interop_threads')}",
      ],
      ["environment", ", ".join(f"`{k}={v}`" for k, v in machine["env"].items()) or "-"],
      ["versions", ", ".join(f"{k} {v}" for k, v in machine["versions"].items())],
      ["OS", machine["os"]],
      ["wall time of the set", f"{results['wall_s'] / 60:.1f} min"],
    ],
  )
  mm_before, mm_after = results["matmul_before"], results["matmul_after"]
  lines += [
    "",
    f"**Matmul peak** (XLA, {mm_before['dtype']}, {mm_before['size']}^3, median of "
    f"7): {_gflops(mm_before['flops_per_s'])} GFLOP/s at the start, "
    f"{_gflops(mm_after['flops_per_s'])} at the end; the better, "
    f'**{_gflops(peak)} GFLOP/s**, is the denominator of every "of matmul peak" '
    "below (on CPU that fraction is the MFU).",
    "",
  ]

  return lines


def _targets(results: dict) -> list[str]:
  lines: list[str] = []
  lines += ["## Targets", ""]
  lines += _table(["target", "measured", "goal", "status"], targets(results))

  return lines


def _versus_pytorch(results: dict) -> list[str]:
  lines: list[str] = []
  lines += [
    "",
    "## Train step: mae_jax vs transformers' PyTorch ViTMAE",
    "",
    "Same model size, batch, image size, dtype and thread count; forward, backward "
    "and AdamW; steps interleaved (mae_jax, PyTorch, mae_jax, ...) after warm-up. "
    "mae_jax runs the trainer's own step (the step engine's program, donated state); PyTorch runs "
    "`ViTMAEForPreTraining` in eager mode with `torch.optim.AdamW` (foreach) and the "
    "reference's decay groups.",
    "",
  ]
  lines += _table(
    [
      "model",
      "batch",
      "mae_jax img/s",
      "PyTorch img/s",
      "ratio",
      "PyTorch step ms (p10-p90)",
      "PyTorch attention",
      "steps",
    ],
    [
      [
        row["label"],
        row["batch"],
        f"{row['images_per_s']:.2f}",
        f"{row['torch']['images_per_s']:.2f}",
        f"**{row['ratio']:.2f}x**",
        f"{1e3 * row['torch']['median_s']:.0f} ({1e3 * row['torch']['p10_s']:.0f}-"
        f"{1e3 * row['torch']['p90_s']:.0f})",
        row["torch"]["attention"],
        row["steps"],
      ]
      for row in results["compare"]
    ],
  )

  return lines


def _throughput(results: dict) -> list[str]:
  lines: list[str] = []
  peak = _peak(results)
  lines += [
    "",
    "## Train step throughput and FLOPs (mae_jax)",
    "",
    "Model FLOPs are analytic (matmuls and attention; encoder on 1 + visible tokens, "
    "decoder on 1 + L; x3 for forward + backward). XLA's `cost_analysis` counts the "
    "compiled step (elementwise work and AdamW included, the patch embedding's unneeded "
    "input gradient excluded).",
    "",
  ]
  # Fine-tuning: the whole ViT on all 1 + L tokens, forward + backward,
  # with Mixup, erasing and drop path: the job's own step.
  step_rows = (
    list(results["compare"])
    + [r for row in results["mask_tokens"] for r in (row["visible"], row["mask_tokens"])]
    + list(results.get("finetune", []))
  )
  lines += _table(
    ["model", "batch"] + STEP_HEADER,
    [[row["label"], row["batch"]] + _step_cells(row, peak) for row in step_rows],
  )
  if results["variants"]:
    base = results["variants"][0]
    lines += [
      "",
      f"### Variants of the {base['label'].replace(' baseline', '')} step",
      "",
      "Each variant's steps interleaved with the unchanged step (the baseline row), "
      "so the ratio is a same-run ratio.",
      "",
    ]
    lines += _table(
      [
        "variant",
        "batch",
        "img/s",
        "vs baseline",
        "compile s",
        "XLA GFLOP/img (vs model)",
        "of matmul peak",
        "peak memory/device",
      ],
      [
        [
          row["label"],
          row["batch"],
          f"{row['images_per_s']:.2f}",
          f"{row['vs_baseline']:.2f}x",
          f"{row['compile_s']:.1f}",
          _xla_text(row),
          f"{100 * row['model_flops_per_s'] / peak:.0f} %",
          gib(row.get("peak_bytes")),
        ]
        for row in results["variants"]
      ],
    )

  lines += [
    "",
    '## Visible-only encoder vs the "w/ [M]" encoder (the paper\'s speed claim)',
    "",
    "`ModelConfig(encoder_mask_tokens=True)`: removed patches become a learned token "
    "and the encoder processes all L + 1 tokens (the decoder then needs no unshuffle). "
    "Same batch, interleaved steps.",
    "",
  ]
  lines += _table(
    ["model", "batch", "visible-only img/s", "w/ [M] img/s", "speedup", "model FLOP ratio"],
    [
      [
        row["label"],
        row["batch"],
        f"{row['visible']['images_per_s']:.2f}",
        f"{row['mask_tokens']['images_per_s']:.2f}",
        f"**{row['speedup']:.2f}x**",
        f"{row['flop_ratio']:.2f}x",
      ]
      for row in results["mask_tokens"]
    ],
  )

  return lines


def _memory(results: dict) -> list[str]:
  lines: list[str] = []
  lines += [
    "",
    "## Memory (XLA memory analysis of the compiled step, per device)",
    "",
    "Peak = arguments + outputs not aliased to the donated state + temporaries "
    "(or XLA's own peak figure when larger). Compile-only. On CPU, remat only pays "
    "with `scan_layers`: unrolled, XLA's CPU schedule keeps the activations live "
    "anyway.",
    "",
  ]
  lines += _table(
    [
      "model",
      "batch",
      "remat",
      "peak/device",
      "temporaries",
      "arguments",
      "compile s",
      "XLA GFLOP/img (vs model)",
    ],
    [
      [
        row["label"],
        row["batch"],
        row["remat"],
        gib(row["peak_bytes"]),
        gib(row.get("temp_bytes")),
        gib(row.get("argument_bytes")),
        f"{row['compile_s']:.1f}",
        _xla_text(row),
      ]
      for row in results["memory"]
    ],
  )

  return lines


def _input_pipeline(results: dict) -> list[str]:
  lines: list[str] = []
  inputs = results["input"]
  every = inputs["all_cores"]
  resume = inputs.get("resume")
  digits = results["digits"]
  lines += [
    "",
    "## Input pipeline",
    "",
    "`mae_jax.data.make_iterator` (Grain) with the ImageNet settings over "
    f"{inputs.get('images', '?')} JPEGs of 500x375 (quality 90; "
    + (
      "random blocks of colour with noise"
      if inputs.get("content") == "synthetic"
      else "crops of scikit-learn's sample photos"
    )
    + f"), read as an image folder of {inputs.get('records', '?')} entries (links "
    "repeat the files: Grain's shuffle costs per example what a split of that length "
    "costs): RandomResizedCrop (bicubic, antialiased), flip, batch as uint8 (normalised "
    "on the device); a fresh process pinned to the cores. Native: the crop decoder "
    "(only the window the resize reads is decoded"
    + (
      f", its {inputs['transform']['resize_code']} resize code"
      if (inputs.get("transform") or {}).get("resize_code")
      else ""
    )
    + "); fallback: simplejpeg's full decode + Pillow's resize.",
    "",
  ]
  rows = []
  fidelity = inputs.get("fidelity") or {}
  if fidelity.get("native"):
    rows.append(
      [
        "native crops vs the reference (Pillow decode + resize)",
        f"{fidelity['crops_differing']} of {fidelity['boxes']} crops differ; largest "
        f"difference {fidelity['max_levels']} levels",
      ]
    )
  transform, fallback = inputs.get("transform"), inputs.get("transform_fallback")
  if transform and fallback:
    rows.append(
      [
        "the train transform alone, one core (the ceiling): native / fallback",
        f"{transform['images_per_s']:.0f} / {fallback['images_per_s']:.0f} img/s "
        f"({transform['images_per_s'] / fallback['images_per_s']:.2f}x)",
      ]
    )

  def rate(run, ceiling):
    text = f"{run['images_per_s']:.0f} img/s"
    if ceiling:
      text += f" ({100 * run['images_per_s'] / ceiling['images_per_s']:.0f} % of its transform)"
    return text

  for key, label, ceiling in (
    ("one_core_in_process", "one core, in-process (1 thread), native", transform),
    ("one_core_fallback", "one core, in-process (1 thread), fallback", fallback),
    ("one_core", "one core, one worker process (1 thread), native", transform),
    (
      "one_worker_own_core",
      "one worker process (1 thread) on its own core, the training process on another",
      transform,
    ),
  ):
    if key in inputs:
      rows.append([label, rate(inputs[key], ceiling)])
  rows.append(
    [
      f"all {every['cores']} cores ({every['workers']} worker processes)",
      f"{every['images_per_s']:.0f} img/s ({every['images_per_s_per_core']:.0f} per core)",
    ]
  )
  threads = inputs.get("all_cores_in_process")
  if threads:
    rows.append(
      [
        f"all {threads['cores']} cores, in-process ({threads['threads']} threads)",
        f"{threads['images_per_s']:.0f} img/s ({threads['images_per_s_per_core']:.0f} per core)",
      ]
    )
  if resume:
    times = ", ".join(
      f"{row['first_batch_s']:.2f} s at epoch {row['epoch']}" for row in resume["rows"]
    )
    rows.append([f"first batch after resuming ({resume['images']} images)", times])
  rows.append(
    [
      f"digits pretraining: time blocked on the next batch ({digits['source']}, "
      f"{digits.get('steps', '?')} steps)",
      f"{100 * digits['input_wait_fraction']:.2f} % (worst logged interval "
      f"{100 * digits['max_interval_fraction']:.2f} %), at "
      f"{common.fmt(digits.get('train_images_per_s'), 0)} img/s",
    ]
  )
  lines += _table(["measurement", "value"], rows)

  return lines


def _accelerators(results: dict) -> list[str]:
  lines: list[str] = []
  lines += ["", "## Accelerators", ""]
  lines += aot_lines(results.get("aot"))
  lines += [
    "- Measured bfloat16 MFU on a GPU: **not measured** (no GPU was available). Run "
    "`python -m benchmarks.accelerator_check` on a GPU machine (5-7 minutes): it "
    "measures the bf16 matmul rate first, then PyTorch ViTMAE (eager and torch.compile) "
    "and the trainer's ViT-B/16 and ViT-L/16 steps at a realistic per-chip batch with xla "
    "and cudnn attention (images/s, MFU against that rate, peak memory, ratios).",
    "",
  ]
  return lines


SECTIONS = (
  _machine,
  _targets,
  _versus_pytorch,
  _throughput,
  _memory,
  _input_pipeline,
  _accelerators,
)


def render(results: dict) -> str:
  """BENCHMARKS.md: the command, then one section per table."""
  lines = [
    "# Benchmarks",
    "",
    "Generated by the harness in `benchmarks/` (see `benchmarks/README.md` for what each "
    "number means, the optimisations tried and why targets are missed). Do not edit: "
    "rerun the command.",
    "",
    "```bash",
    f".venv/bin/{results['command'].replace('python -m', 'python -m', 1)}",
    "```",
    "",
  ]
  if results.get("tiny"):
    lines += ["**Tiny sizes (a smoke test): these numbers mean nothing.**", ""]
  for section in SECTIONS:
    lines += section(results)
  if results.get("rendered_with"):
    lines += [f"(Re-rendered from the run's results with `{results['rendered_with']}`.)", ""]
  return "\n".join(lines) + "\n"


def aot_label(aot: dict) -> str:
  import re

  width = re.search(r"width (\d+)", aot.get("model", ""))
  name = {
    "192": "ViT-Ti/16",
    "384": "ViT-S/16",
    "768": "ViT-B/16",
    "1024": "ViT-L/16",
    "1280": "ViT-H/14",
  }.get(width.group(1) if width else "", "ViT")
  where = aot.get("accelerator_type") or aot.get("topology")
  return f"{name} step on {where} ({aot.get('chips')} chips)"


def aot_lines(aot) -> list[str]:
  if not isinstance(aot, dict) or aot.get("mfu") is None:
    pointer = aot.get("pointer") if isinstance(aot, dict) else aot
    return [f"- Predicted MFU of the ViT-L/16 step on a v5p slice: {pointer or 'see mae_jax.aot'}."]
  memory = aot.get("memory") or {}
  used = memory.get("total")
  return [
    f"- **Predicted** (not measured) by the pod-plan tool `mae_jax.aot` (`{aot['source']}`): "
    f"{aot.get('model')}, {aot.get('params', 0) / 1e6:.1f} M parameters, {aot.get('dtype')}, "
    f"remat {aot.get('remat_policy')}, on {aot.get('accelerator_type')} "
    f"({aot.get('topology')}, {aot.get('chips')} chips), mesh {aot.get('mesh')}, global batch "
    f"{aot.get('global_batch')} ({aot.get('batch_per_chip')} per chip): step "
    f"{1e3 * aot['step_seconds']:.1f} ms from {aot.get('step_time_source')}, "
    f"**predicted MFU {100 * aot['mfu']:.1f} %**; compiled FLOPs "
    f"{aot.get('compiler_flops', 0) * aot.get('chips', 1):.3e} vs model "
    f"{aot.get('model_flops', 0):.3e} per step; memory per chip "
    f"{gib(used)} of {gib(aot.get('hbm_bytes'))} HBM."
  ]
