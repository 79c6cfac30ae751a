"""AOT pod plans: the real train step compiled for a TPU topology on this CPU.

`python -m mae_jax.aot` runs in subprocesses for TPU topologies (libtpu is
loaded there, never in the test process): a 2-slice v5e plan that fits, and
one whose activations cannot fit in HBM. The report logic, the local-CPU
"topology", multi-slice mesh shapes and bad input run in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from configs import pretrain as pretrain_config
from mae_jax import aot
from mae_jax.aot import cli as aot_cli
from mae_jax.aot import planner, roofline, topologies
from mae_jax.core import sharding
from mae_jax.errors import ConfigError
from tests.helpers import REPO, TINY_OVERRIDES, environment

TINY_MODEL = {**TINY_OVERRIDES, "global_batch_size": 16}


def tiny_config(**overrides):
  config = pretrain_config.get_config("digits")
  for key, value in {**TINY_MODEL, **overrides}.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def run_aot(
  tmp_path, topology: str, *flags: str, config: str = "configs/pretrain.py:digits"
) -> tuple[subprocess.CompletedProcess, dict]:
  out = tmp_path / "report.json"
  cmd = [
    sys.executable,
    "-m",
    "mae_jax.aot",
    f"--config={config}",
    f"--topology={topology}",
    f"--json={out}",
    *flags,
  ]
  result = subprocess.run(
    cmd, cwd=REPO, env=environment(1), capture_output=True, text=True, timeout=600
  )
  return result, (json.loads(out.read_text()) if out.exists() else {})


def test_libtpu_is_installed_for_the_aot_tests():
  assert topologies.libtpu_path(), f"the AOT tests need libtpu: {topologies.LIBTPU_HINT}"


def test_aot_plan_for_two_tpu_slices(tmp_path):
  flags = [f"--config.{k}={v}" for k, v in TINY_MODEL.items()]
  result, report = run_aot(
    tmp_path,
    "v5e:2x2",
    "--num_slices=2",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=-1",
    "--config.model.dtype=bfloat16",
    *flags,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert report["chips"] == 8 and report["hosts"] == 2
  assert report["accelerator_type"] == "v5litepod-4"
  assert report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  # The hybrid mesh: only `data` crosses between the slices.
  assert report["slices_per_axis"] == {"data": 2, "fsdp": 1, "tensor": 1}
  memory = report["memory"]
  assert 0 < memory["argument"] and 0 < memory["total"] < report["hbm_bytes"] == 16 * 1024**3
  assert report["compiler_flops"] > 0 and report["model_flops"] > 0
  assert report["step_seconds"] > 0 and 0 < report["mfu"] < 1
  assert report["fits"] and "verdict          fits" in result.stdout
  # fsdp's gathers stay on the slice's ICI; data's gradient reduction
  # crosses the data-centre network between the two slices.
  links = report["collective_links"]
  assert links["DCN"]["count"] >= 1 and links["ICI"]["count"] >= 1
  assert links["DCN"]["bandwidth"] == 25e9 / 8 and "DCN" in result.stdout


def test_aot_plan_for_an_ironwood_slice(tmp_path):
  """TPU7x: each chip is two JAX devices, each with half the chip's HBM."""
  flags = [f"--config.{k}={v}" for k, v in TINY_MODEL.items()]
  result, report = run_aot(tmp_path, "tpu7x:2x2x1", "--noevaluations", *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert report["chips"] == 8 and report["hosts"] == 1  # 4 chips, 8 devices
  assert report["accelerator_type"] == "tpu7x-8"
  assert report["hbm_bytes"] == 96 * 1024**3 and report["fits"]
  assert "tpu7x-8: 8 devices (2 per chip), 1 hosts" in result.stdout
  assert topologies.chip_of_device_kind("TPU7x") is topologies.CHIPS["tpu7x"]


LOOP_SIZES = [
  "--config.model.width=192",
  "--config.model.heads=3",
  "--config.model.depth=4",
  "--config.model.decoder_width=128",
  "--config.model.image_size=64",
  "--config.model.patch_size=8",
  "--config.data.image_size=64",
  "--config.global_batch_size=64",
]


@pytest.mark.parametrize("topology", ["v5e:2x2", "h100:4"])
def test_scanned_and_accumulated_steps_keep_the_models_flops_on_tpus_and_gpus(tmp_path, topology):
  """XLA counts a loop body once, on TPU and GPU alike: the plan of a step
  with scan_layers and accumulation counts its unrolled twin, so compiled
  FLOPs stay with the model's, as the unrolled step's do."""
  if topology.startswith("h100") and not topologies.gpu_plugin_dir():
    pytest.fail(f"the GPU AOT tests need: {topologies.GPU_PLUGIN_HINT}")
  result, looped = run_aot(
    tmp_path,
    topology,
    *LOOP_SIZES,
    "--config.model.scan_layers=True",
    "--config.grad_accum_steps=2",
    "--noevaluations",  # the train step's count is the point here
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "unrolled twin" in looped["cost_source"] and looped["evaluations"] == []
  # Counted once per loop, they would be far below the model's (a quarter
  # of the layers, half the micro-batches); the cpu:8 test above compares
  # the looped and unrolled programs directly.
  assert looped["compiler_flops"] * looped["chips"] == pytest.approx(
    looped["model_flops"], rel=0.15
  )


def test_aot_plan_that_does_not_fit_exits_1_and_names_the_knobs(tmp_path):
  # 1.6B parameters: with AdamW, 18 GiB of state on every v5e chip (16 GiB)
  # when replicated; XLA:TPU refuses to compile (in seconds).
  big = [
    "--config.model.width=8192",
    "--config.model.heads=32",
    "--config.model.depth=2",
    *(
      f"--config.{k}={v}"
      for k, v in TINY_MODEL.items()
      if k not in ("model.width", "model.heads", "model.depth")
    ),
  ]
  result, report = run_aot(tmp_path, "v5e:2x2", *big, "--noevaluations")
  assert result.returncode == aot.EXIT_DOES_NOT_FIT, result.stderr[-3000:]
  assert not report["fits"] and "DOES NOT FIT" in result.stdout
  assert "RESOURCE_EXHAUSTED" in report["compile_error"]
  assert "try: shard parameters" in result.stdout and "--config.mesh.fsdp=-1" in result.stdout
  assert "--config.model.remat_policy=full" in result.stdout


def test_aot_on_local_cpu_devices_reports_memory_and_flops():
  report = aot.check_plan(
    tiny_config(**{"mesh.data": 2, "mesh.fsdp": -1}), topologies.parse("cpu:8")
  )
  assert report.fits and report.chips == 8 and report.mesh == {"data": 2, "fsdp": 4, "tensor": 1}
  assert report.memory["total"] > 0 and report.compiler_flops > 0
  assert report.hbm_bytes is None and report.step_seconds is None  # no chip figures
  # Parameters and both AdamW moments (float32); the weight matrices are
  # split 4 ways by fsdp, biases and norms are not.
  unsharded = 3 * 4 * report.params
  assert unsharded / 4 <= report.state_bytes < unsharded / 2
  text = aot.format_report(report)
  assert "cpu:8" in text and "no limit known" in text and "fits" in text


def test_a_plan_over_the_memory_limit_names_the_knobs():
  config = tiny_config(**{"mesh.data": -1})
  report = aot.check_plan(config, topologies.parse("cpu:8"), hbm_bytes=1024)
  assert not report.fits
  tips = " ".join(report.suggestions)
  for knob in (
    "--config.mesh.fsdp=-1",
    "--config.model.remat_policy=full",
    "--config.grad_accum_steps=2",
    "--config.model.dtype=bfloat16",
  ):
    assert knob in tips


def test_model_flops_count_matches_the_reference_sizes():
  # ViT-B/16 MAE: encoder on 49+1 tokens, decoder on 196+1: about 3 x 19.6 GFLOPs.
  from mae_jax.model.config import preset
  from mae_jax.model.flops import train_flops_per_image

  flops = train_flops_per_image(preset("B/16"))
  assert 55e9 < flops < 62e9


@pytest.mark.parametrize(
  "text, slices, message",
  [
    ("v9:4x4", 1, "unknown chip 'v9'"),
    ("v5p:4x4", 1, "3 axes"),
    ("v5e:0x4", 1, "not a positive integer"),
    ("v5e:4x4", 0, "num_slices"),
    ("cpu:99", 1, "only 8 CPU devices"),
  ],
)
def test_bad_topologies_are_refused(text, slices, message):
  with pytest.raises(ValueError, match=message):
    topologies.devices(topologies.parse(text, slices))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"mesh.data": 16}, "needs 16 devices"),
    ({"global_batch_size": 12}, "multiple of 8"),
    ({"data.source": "tfds", "data.name": "my_images"}, "set --config.num_train_steps"),
  ],
)
def test_bad_plans_are_refused_before_compiling(overrides, message):
  with pytest.raises(ValueError, match=message):
    aot.check_plan(tiny_config(**overrides), topologies.parse("cpu:8"))


def test_cli_rejects_bad_input_with_exit_2(tmp_path):
  result, _ = run_aot(tmp_path, "v5p:4x4")
  assert result.returncode == aot.EXIT_BAD_INPUT
  assert "error: --topology='v5p:4x4': v5p slices have 3 axes" in result.stderr


@pytest.mark.parametrize(
  "shape, slices, expected",
  [
    ((4, 2, 1), 2, (2, 1, 1)),  # data spans the slices
    ((1, 8, 1), 2, (1, 2, 1)),  # no data axis: fsdp does
    ((2, 4, 1), 4, (2, 2, 1)),  # both
    ((8, 1, 2), 1, (1, 1, 1)),  # one slice: no DCN
  ],
)
def test_slices_go_on_data_then_fsdp(shape, slices, expected):
  assert sharding.dcn_shape(shape, slices) == expected


def test_tensor_never_spans_slices():
  with pytest.raises(ValueError, match="multiple of 2"):
    sharding.dcn_shape((1, 1, 8), 2)


def sample_report(**changes) -> aot.Report:
  """A report as the planner fills it before reading the compiled program:
  ViT-H on a v5e:8x8 slice, unless `changes` say otherwise."""
  fields = dict(
    topology="v5e:8x8",
    accelerator_type="v5litepod-64",
    chips=64,
    hosts=16,
    mesh={"data": 64, "fsdp": 1, "tensor": 1},
    slices_per_axis={"data": 1, "fsdp": 1, "tensor": 1},
    model="ViT-H",
    params=656_613_964,
    global_batch=4096,
    batch_per_chip=64,
    grad_accum_steps=1,
    dtype="float32",
    remat_policy="none",
    hbm_bytes=16 * 1024**3,
    state_bytes=7 * 1024**3,
    model_flops=1.193e15,
  )
  return aot.Report(**{**fields, **changes})


def test_the_report_notes_recomputation():
  report = sample_report(compiler_flops=1.365e15 / 64)
  assert "14 % more FLOPs than the model" in aot.format_report(report)
  report.compiler_flops = 1.2e15 / 64
  assert "more FLOPs" not in aot.format_report(report)


def eval_config(module, **changes):
  """A tiny evaluation config with no checkpoint: the planner reads none."""
  config = module.get_config("digits")
  for key, value in {**TINY_MODEL, **changes}.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def test_finetune_and_probe_configs_are_planned_like_pretraining():
  from configs import finetune as finetune_config
  from configs import linprobe as linprobe_config

  finetune = aot.check_plan(
    eval_config(finetune_config, **{"mesh.fsdp": 2}), topologies.parse("cpu:8")
  )
  assert finetune.fits and finetune.job == "finetune" and finetune.frozen_bytes == 0
  assert finetune.compiler_flops > 0 and finetune.model_flops > 0
  # The probe's encoder is frozen: an input of the step, not part of its state.
  probe = aot.check_plan(
    eval_config(linprobe_config, cache_features=False), topologies.parse("cpu:8")
  )
  assert probe.fits and probe.job == "linprobe"
  assert probe.frozen_bytes > probe.state_bytes > 0
  assert "frozen per chip" in aot.format_report(probe)
  assert "plan of the linprobe step" in aot.format_report(probe)


def test_a_knn_config_plans_its_feature_and_vote_programs():
  from configs import knn as knn_config

  report = aot.check_plan(eval_config(knn_config), topologies.parse("cpu:8"))
  names = [entry["name"] for entry in report.evaluations]
  assert [name.split(" (")[0] for name in names] == ["k-NN features", "k-NN vote"]
  assert "1,497 bank features" in names[1]  # the digits train split
  assert report.fits and all(entry["total"] > 0 for entry in report.evaluations)
  text = aot.format_report(report)
  assert "plan of the knn programs" in text and "state per chip" not in text


def test_evaluation_programs_are_planned_and_can_be_what_does_not_fit():
  """The train step fits; the k-NN monitor's vote against an ImageNet-sized
  bank on one device (1024 queries x 1,281,167 similarities in float32:
  5.2 GB) does not, and the verdict says so."""
  digits = aot.check_plan(tiny_config(), topologies.parse("cpu:8"))
  names = [entry["name"].split(" (")[0] for entry in digits.evaluations]
  assert names == ["reconstruction eval", "k-NN features", "k-NN vote"] and digits.fits
  imagenet = tiny_config(**{"data.source": "tfds", "data.name": "imagenet2012"})
  report = aot.check_plan(imagenet, topologies.parse("cpu:8"), hbm_bytes=2 * 1024**3)
  assert report.memory["total"] < 2 * 1024**3  # the step itself fits
  vote = report.evaluations[-1]
  assert "1,281,167 bank features" in vote["name"] and vote["where"] == "one device"
  assert vote["total"] > 5e9 and not vote["fits"] and not report.fits
  assert "k-NN vote" in aot.format_report(report) and "DOES NOT FIT" in aot.format_report(report)
  # Fine-tuning plans its accuracy pass.
  from configs import finetune as finetune_config

  finetune = aot.check_plan(eval_config(finetune_config), topologies.parse("cpu:8"))
  assert [e["name"].split(" (")[0] for e in finetune.evaluations] == ["accuracy eval"]


def test_collectives_are_read_off_the_hlo_with_their_groups_and_bytes():
  from mae_jax.aot import collectives

  hlo = "\n".join(
    [
      "%a = f32[1024]{0} all-reduce(%x), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add",
      "%b = bf16[8,128]{1,0} all-gather(%y), replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}",
      "%c = f32[16]{0} reduce-scatter(%z), replica_groups=mesh['axis_0'=2,'axis_1'=4] "
      "{'axis_0'}, dimensions={0}",
      "%d = ((f32[4]{0}), f32[32]{0}) all-gather-start(%w), replica_groups={}, dimensions={0}",
      "%e = f32[32]{0} all-gather-done(%d)",
      "%f = f32[64]{0} collective-permute(%v), source_target_pairs={{0,1},{1,2}}",
      # XLA:TPU's reduction across slices: a host transfer to the megascale runtime.
      "%g = (bf16[2,8,128]{2,1,0:T(8,128)(2,1)}, u32[], token[]) send(%x, %a), "
      'is_host_transfer=true, frontend_attributes={_xla_megascale_reduce_operation="SUM"}',
    ]
  )
  found = collectives.collectives_of(hlo, 8, slices=2)
  assert [c.op for c in found] == ["all-reduce", "all-gather", "reduce-scatter", "all-gather"] + [
    "collective-permute",
    "all-reduce",
  ]
  reduce, gather, scatter, started, permute, across = found
  assert across.result_bytes == 4096 and across.group_size == 2
  assert across.link_bytes() == 4096 and collectives.crosses(across, [0] * 8)
  assert reduce.groups == [[0, 1, 2, 3], [4, 5, 6, 7]] and reduce.result_bytes == 4096
  assert reduce.link_bytes() == pytest.approx(2 * 3 / 4 * 4096)
  assert gather.groups == [[0, 2, 4, 6], [1, 3, 5, 7]] and gather.result_bytes == 2048
  assert scatter.groups == [[0, 4], [1, 5], [2, 6], [3, 7]]  # the mesh form, over axis_0
  assert scatter.link_bytes() == 1 * 64  # (n - 1) x the shard
  assert started.group_size == 8 and started.result_bytes == 128  # the output, not the operand
  assert permute.link_bytes() == 256
  # Groups inside one host stay on the fast link; a group across hosts does not.
  homes = [0, 0, 0, 0, 1, 1, 1, 1]
  assert not collectives.crosses(reduce, homes) and collectives.crosses(gather, homes)
  near, far = collectives.Link("NVLink", 450e9), collectives.Link("network", 50e9)
  links = collectives.time_per_link(found, homes, near, far, repeat=2)
  assert links["NVLink"]["count"] == 4 and links["network"]["count"] == 8  # x 2 repeats
  assert links["network"]["seconds"] == pytest.approx(links["network"]["bytes"] / 50e9)


def test_the_cli_prints_user_errors_in_one_line_and_keeps_a_bugs_traceback(monkeypatch):
  class Flag:
    def __init__(self, value):
      self.value = value

  options = {
    "topology": Flag("cpu:8"),
    "num_slices": Flag(1),
    "hbm_gib": Flag(None),
    "json": Flag(None),
    "evaluations": Flag(True),
  }

  def fails(error):
    def check_plan(*args, **kwargs):
      raise error

    monkeypatch.setattr(aot_cli, "check_plan", check_plan)

  fails(ConfigError("config.x=1: bad."))
  with pytest.raises(SystemExit) as exit_:
    aot_cli.main(["aot"], Flag(tiny_config()), options)
  assert exit_.value.code == aot.EXIT_BAD_INPUT
  fails(ValueError("a bug"))  # not a user mistake: it propagates with its traceback
  with pytest.raises(ValueError, match="a bug"):
    aot_cli.main(["aot"], Flag(tiny_config()), options)


def test_scanned_layers_and_accumulation_are_counted_in_full():
  """XLA's cost analysis counts a loop body once, so a step with scanned
  layers and accumulation is counted on its unrolled twin: its compiled
  FLOPs stay within a few % of the unrolled step's (the optimizer update,
  counted once per micro-batch, is the difference)."""
  size = {
    "model.width": 192,
    "model.heads": 3,
    "model.depth": 4,
    "model.decoder_width": 128,
    "model.image_size": 64,
    "model.patch_size": 8,
    "data.image_size": 64,
    "global_batch_size": 64,
  }
  plain = aot.check_plan(tiny_config(**size), topologies.parse("cpu:8"))
  looped = aot.check_plan(
    tiny_config(**size, **{"model.scan_layers": True, "grad_accum_steps": 2}),
    topologies.parse("cpu:8"),
  )
  assert plain.cost_source == "the compiled step" and "unrolled twin" in looped.cost_source
  assert looped.model_flops == plain.model_flops
  assert looped.compiler_flops == pytest.approx(plain.compiler_flops, rel=0.04)
  assert looped.compiler_flops * looped.chips == pytest.approx(looped.model_flops, rel=0.1)
  assert "unrolled twin" in aot.format_report(looped)


def test_the_roofline_uses_the_peak_of_the_compute_dtype():
  h100, v5p = topologies.parse("h100:8").chip, topologies.parse("v5p:2x2x1").chip
  assert roofline.peak_of(h100, "bfloat16") == (h100.peak_bf16_flops, "bf16")
  peak, label = roofline.peak_of(h100, "float32")
  assert peak == h100.peak_bf16_flops / 2 and label.startswith("TF32")
  assert roofline.peak_of(v5p, "float32")[0] == v5p.peak_bf16_flops  # bf16 passes on a TPU
  report = sample_report(
    topology="h100:8",
    accelerator_type="h100",
    chips=8,
    hosts=1,
    mesh={"data": 8, "fsdp": 1, "tensor": 1},
    model="ViT-B",
    global_batch=2048,
    batch_per_chip=256,
    hbm_bytes=60 * 1024**3,
    model_flops=1.2e14,
  )
  planner.read_cost(report, {"flops": 1.5e13, "bytes accessed": 1.0e11}, h100)
  assert report.compute_seconds == pytest.approx(1.5e13 / (h100.peak_bf16_flops / 2))
  assert report.step_seconds == max(report.compute_seconds, report.memory_seconds)
  # A collective-bound plan says so.
  report.collective_seconds = 1.0
  planner.read_cost(report, {"flops": 1.5e13, "bytes accessed": 1.0e11}, h100)
  assert report.step_seconds == 1.0 and "collectives-bound" in report.step_time_source
  text = aot.format_report(report)
  assert "compute time" in text and "memory time" in text and "TF32" in text


def test_a_rectangular_plan():
  report = aot.check_plan(
    tiny_config(**{"model.image_size": (16, 24), "data.image_size": (16, 24)}),
    topologies.parse("cpu:8"),
  )
  assert report.fits and "16x24 px" in report.model
  square = aot.check_plan(tiny_config(), topologies.parse("cpu:8"))
  # 24 patches against 16: the step's model FLOPs grow with the grid.
  assert report.model_flops > 1.3 * square.model_flops
