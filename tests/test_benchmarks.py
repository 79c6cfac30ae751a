"""The benchmark harness (`benchmarks/`) keeps working: everything runs at toy
sizes on the CPU. Nothing here times anything or asserts a speed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import accelerator_check, common, input_bench, measure, profile, run, steps
from mae_jax.data import crop_resize
from mae_jax.model import flops
from mae_jax.model.config import TINY, ModelConfig, preset
from tests.helpers import REPO

# The tiny preset's sizes, given field by field (the --model path).
TINY_MODEL = ",".join(f"{field}={value}" for field, value in TINY.items())


def write_metrics(path, lines):
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  return str(path)


def test_analytic_flops_by_hand_for_vit_base():
  cfg = preset("B/16")
  parts = flops.forward_flops_per_image(cfg)
  per_token = 2 * (4 * 768 * 768 + 2 * 768 * 3072)
  assert parts["encoder"] == 12 * (50 * per_token + 4 * 50 * 50 * 768)  # cls + 49 visible
  assert parts["patch_embed"] == 2 * 49 * 768 * 768
  assert parts["prediction"] == 2 * 197 * 512 * 768
  assert flops.train_flops_per_image(cfg) == 3 * sum(parts.values())
  with_mask_tokens = flops.forward_flops_per_image(cfg.replace(encoder_mask_tokens=True))
  assert with_mask_tokens["encoder"] == 12 * (197 * per_token + 4 * 197 * 197 * 768)


def test_analytic_flops_agree_with_xla_cost_analysis():
  # Large enough that matmuls dominate, small enough to compile in seconds.
  cfg = ModelConfig(
    image_size=64,
    patch_size=8,
    width=128,
    depth=2,
    heads=4,
    decoder_width=128,
    decoder_depth=2,
    decoder_heads=4,
  )
  step = steps.MaeStep(cfg, 4, execute=False)
  xla = step.cost()["xla_flops_per_step"] / 4
  assert 0.9 < xla / flops.train_flops_per_image(cfg) < 1.3
  memory = step.memory()
  assert memory["peak_bytes"] >= memory["argument_bytes"] > 0


def test_input_wait_is_weighted_by_interval_length(tmp_path):
  path = write_metrics(
    tmp_path / "metrics.jsonl",
    [
      {"step": 1, "compile_seconds": 3.0},
      {"step": 11, "loss": 1.0, "input_wait_fraction": 0.10, "images_per_sec": 100.0},
      {"step": 21, "loss": 1.0, "input_wait_fraction": 0.0, "images_per_sec": 120.0},
      {"step": 21, "eval_loss": 0.5},
    ],
  )
  result = input_bench.read_input_wait(path)
  assert math.isclose(result["input_wait_fraction"], 0.05)
  assert result["max_interval_fraction"] == 0.10 and result["intervals"] == 2


def test_standard_set_runs_at_tiny_sizes(tmp_path):
  # The digits run's input wait is read from a metrics file here (a real
  # run takes a minute; `test_pretrain.py` covers the loop that logs it).
  metrics = write_metrics(
    tmp_path / "metrics.jsonl",
    [{"step": 5, "loss": 1.0, "input_wait_fraction": 0.02, "images_per_sec": 300.0}],
  )
  out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
  results = run.main(
    ["standard", "--tiny", "--out", str(out), "--json", str(raw), "--digits-metrics", metrics]
  )
  text = out.read_text()
  for heading in (
    "## Machine",
    "## Targets",
    "mae_jax vs transformers' PyTorch ViTMAE",
    "## Train step throughput",
    "w/ [M]",
    "## Memory",
    "## Input pipeline",
    "## Accelerators",
    "Tiny sizes",
  ):
    assert heading in text, heading
  (compare,) = results["compare"]
  assert compare["ratio"] > 0 and compare["torch"]["images_per_s"] > 0
  assert math.isfinite(compare["losses"]["mae_jax"]) and math.isfinite(compare["losses"]["torch"])
  (mask_tokens,) = results["mask_tokens"]
  assert mask_tokens["flop_ratio"] > 1 and mask_tokens["speedup"] > 0
  assert [row["remat"] for row in results["memory"]] == list(run.StandardSet.tiny().remat_policies)
  # The fine-tuning job's own step (the job table's builder), timed like pretraining's.
  (finetune,) = results["finetune"]
  assert finetune["images_per_s"] > 0 and finetune["label"] == "tiny fine-tuning"
  # Its own model FLOPs: the whole ViT on all 1 + L tokens, forward and backward.
  tiny = preset("tiny")
  assert finetune["model_gflop_per_image"] == flops.train_flops_per_example("finetune", tiny) / 1e9
  assert "| tiny fine-tuning | 4 |" in text
  assert results["input"]["one_core"]["images_per_s"] > 0
  code = results["input"]["transform"]["resize_code"]
  assert code == (crop_resize.vector_code() if crop_resize.available() else None)
  assert code is None or f"its {code} resize code" in text
  if results["input"]["all_cores"]["cores"] >= 2:  # the GPU-host layout needs a second core
    assert results["input"]["one_worker_own_core"]["images_per_s"] > 0
    assert "one worker process (1 thread) on its own core" in text
  assert results["digits"]["input_wait_fraction"] == 0.02
  assert json.loads(raw.read_text())["command"].startswith("python -m benchmarks.run standard")
  # Re-rendered with a pod-plan report (`python -m mae_jax.aot --json`) quoted.
  aot = tmp_path / "aot.json"
  aot.write_text(
    json.dumps(
      {
        "topology": "v5p:4x4x4",
        "accelerator_type": "v5p-128",
        "chips": 64,
        "mesh": {"data": 64},
        "model": "ViT width 1024 depth 24 patch 16 at 224 px",
        "params": 329239296,
        "global_batch": 4096,
        "batch_per_chip": 64.0,
        "dtype": "bfloat16",
        "remat_policy": "none",
        "hbm_bytes": 95e9,
        "memory": {"total": 12.6e9},
        "compiler_flops": 8.0e12,
        "model_flops": 5.1e14,
        "step_seconds": 0.056,
        "step_time_source": "the compiler's cost model",
        "mfu": 0.31,
      }
    )
  )
  rendered = tmp_path / "rendered.md"
  run.main(["render", "--json", str(raw), "--out", str(rendered), "--aot-json", str(aot)])
  assert "ViT-L/16 step on v5p-128 (64 chips): predicted MFU" in rendered.read_text()
  assert "predicted MFU 31.0 %" in rendered.read_text()


def test_avx2_code_runs_in_every_measuring_process(tmp_path):
  """`benchmarks.run input --avx2-code`: the children run the AVX2 clone
  of the crop decoder and no AVX-512 numpy loops; the environment is put
  back afterwards."""
  probe = [
    sys.executable,
    "-c",
    "import json; from benchmarks import input_bench; print(json.dumps(input_bench.code_in_use()))",
  ]

  def child_code():
    result = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)

  before = child_code()
  try:
    with measure.avx2_code(str(tmp_path)):
      inside = child_code()
  except crop_resize.BuildError as error:
    pytest.skip(f"the native crop decoder cannot be built here: {error}")
  assert inside["resize_code"] in ("AVX2", "plain C")  # plain: a CPU without AVX2
  assert not {"X86_V4", "AVX512_ICL", "AVX512_SPR"} & set(inside["numpy_dispatch"])
  assert child_code() == before and "MAE_JAX_CROP_RESIZE_LIBRARY" not in os.environ


def test_step_subcommand_any_configuration():
  result = run.main(
    [
      "step",
      "--preset",
      "custom",
      "--model",
      TINY_MODEL,
      "--batch",
      "4",
      "--remat",
      "dots",
      "--scan",
      "--mesh",
      "data=2",
      "--warmup",
      "1",
      "--steps",
      "2",
    ]
  )
  assert result["devices"] == 2 and result["images_per_s"] > 0
  assert result["config"]["remat_policy"] == "dots" and result["config"]["scan_layers"]


def test_profile_summarises_a_trace():
  text = profile.main(
    ["--preset", "custom", "--model", TINY_MODEL, "--batch", "2", "--top", "5", "--steps", "1"]
  )
  assert "By kind of operation:" in text and "By model operation" in text


def test_accelerator_check_runs_on_cpu_at_tiny_sizes(tmp_path):
  """The whole check at toy sizes: PyTorch eager and compiled (the 'eager'
  backend: the path, not inductor), the trainer's step, ratios, both files."""
  report = accelerator_check.main(
    ["--tiny", "--out-dir", str(tmp_path), "--torch-compile-backend", "eager"]
  )
  rows = {(row["framework"], row["attention"]): row for row in report["rows"]}
  assert set(rows) == {("torch", "sdpa (eager)"), ("torch", "sdpa (compile)"), ("mae_jax", "xla")}
  ours = rows["mae_jax", "xla"]
  assert "error" not in ours, ours
  assert ours["images_per_s_per_chip"] > 0 and 0 < ours["mfu_vs_measured_matmul"]
  assert ours["peak_bytes_per_device"] > 0
  assert all("error" not in row for row in rows.values()), rows
  # Each mae_jax row runs in a process of its own (the allocator's peak is
  # per process), and stands beside the planner's prediction: the memory
  # figure always; the step time only for a device kind the planner knows.
  assert ours["process"] != os.getpid()
  assert ours["predicted_memory_bytes"] == ours["peak_bytes_per_device"]
  assert ours["predicted_step_s"] is None
  from mae_jax.aot import topologies

  assert topologies.chip_of_device_kind("NVIDIA H100 80GB HBM3").name == "h100"
  assert topologies.chip_of_device_kind("TPU v5").name == "v5p"
  assert topologies.chip_of_device_kind("NVIDIA H100 PCIe") is None
  (ratio,) = report["ratios"]
  assert ratio["vs_torch_eager"] > 0 and ratio["vs_torch_compile"] > 0
  saved = json.loads((tmp_path / "accelerator_check.json").read_text())
  assert saved["matmul"]["flops_per_s"] > 0 and len(saved["rows"]) == 3
  markdown = (tmp_path / "accelerator_check.md").read_text()
  assert "| mae_jax | tiny | 2 | xla |" in markdown and "vs torch.compile" in markdown
  assert "predicted step (measured)" in markdown and "device kind unknown" in markdown


def test_accelerator_check_fails_fast_on_what_is_missing(tmp_path, monkeypatch):
  with pytest.raises(SystemExit, match="JAX sees no accelerator.*--allow-cpu"):
    accelerator_check.main(["--out-dir", str(tmp_path)])
  monkeypatch.setattr(accelerator_check, "REQUIRED", ("no_such_package_here",))
  with pytest.raises(SystemExit, match="missing packages: no_such_package_here"):
    accelerator_check.main(["--tiny", "--out-dir", str(tmp_path)])
  assert not list(tmp_path.iterdir())  # nothing ran, nothing was written


def test_accelerator_check_skips_rows_past_its_time_budget(tmp_path):
  report = accelerator_check.main(
    ["--tiny", "--no-torch", "--budget-s", "0", "--out-dir", str(tmp_path)]
  )
  assert [row.get("skipped") for row in report["rows"]] == ["skipped: time budget"]
  assert "skipped: time budget" in (tmp_path / "accelerator_check.md").read_text()


def test_mesh_and_fields_parsing():
  assert common.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="unknown"):
    common.parse_mesh("model=2")
  assert common.shortfall(0.8, 1.0) == "missed by 20 %" and common.shortfall(1.2, 1.0) == "met"


def test_reference_curves_are_drawn_from_the_shipped_log(tmp_path):
  from benchmarks import reference_curves

  series = reference_curves.read_metrics(os.path.join(REPO, reference_curves.REFERENCE))
  # The shipped digits run: a full run with evaluation and the k-NN monitor.
  assert series["loss"][-1][0] == 440
  assert series["eval_loss"][-1][1] < 0.6 * series["eval_baseline_loss"][-1][1]
  assert series["knn_top1"][-1][1] > 50
  out = str(tmp_path / "curves.png")
  reference_curves.main(
    [
      "--metrics",
      os.path.join(REPO, reference_curves.REFERENCE),
      "--out",
      out,
      "--against",
      os.path.join(REPO, reference_curves.REFERENCE),
    ]
  )
  assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  broken = tmp_path / "metrics.jsonl"
  broken.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
  with pytest.raises(SystemExit, match="metrics.jsonl:2: not JSON"):
    reference_curves.read_metrics(str(broken))


def test_accelerator_check_imports_only_what_the_gpu_image_has():
  """The GPU image has jax, flax, optax, orbax, einops, torch, transformers;
  no ml_collections, TensorFlow, TFDS or Grain. The check's train step is
  the trainer's (core.train_step), which needs none of them."""
  import subprocess
  import sys

  code = (
    "import sys, benchmarks.accelerator_check, benchmarks.steps\n"
    "print(sorted(m for m in ('ml_collections', 'tensorflow', 'tensorflow_datasets', 'grain',"
    " 'array_record', 'simplejpeg', 'tensorboardX') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]"


def test_accelerator_check_records_the_cudnn_refusal_as_a_row():
  """cuDNN attention refuses odd sequence lengths (the tiny model has 5 and
  17 tokens): the check keeps going with the reason in the row."""
  row = accelerator_check.measure_model(
    "tiny",
    dict(accelerator_check.TINY_FIELDS),
    2,
    dtype="float32",
    attention="cudnn",
    warmup=0,
    steps_count=1,
    matmul_rate=1e9,
    peak=None,
  )
  assert "refuses odd sequence lengths" in row["error"] and row["attention"] == "cudnn"


def test_nominal_peaks_match_the_exact_device_kind():
  """The PCIe and NVL H100s, and the L40S, are not taken for their namesakes;
  v5p reports "TPU v5"; an unknown kind has no peak rather than a neighbour's."""
  assert accelerator_check.nominal_peak("NVIDIA H100 80GB HBM3") == 989e12
  assert accelerator_check.nominal_peak("NVIDIA H100 PCIe") == 756e12
  assert accelerator_check.nominal_peak("NVIDIA H100 NVL") == 835e12
  assert accelerator_check.nominal_peak("NVIDIA L40S") == 362e12
  assert accelerator_check.nominal_peak("NVIDIA L4") == 121e12
  assert accelerator_check.nominal_peak("NVIDIA B200") == 2250e12
  assert accelerator_check.nominal_peak("TPU v5") == 459e12
  assert accelerator_check.nominal_peak("NVIDIA H800") is None
