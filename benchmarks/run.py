r"""The benchmark harness: one command for the standard set, subcommands for
single measurements.

  # The standard set (about 10 minutes on 2 CPU cores) -> BENCHMARKS.md:
  python -m benchmarks.run standard --threads 2 --out BENCHMARKS.md --json results.json
  # ... quoting the pod-plan tool's prediction for ViT-L/16 on a v5p slice:
  python -m mae_jax.aot --config=configs/pretrain.py:vit_large --topology=v5p:4x4x4 \
      --config.model.dtype=bfloat16 --json=aot.json
  python -m benchmarks.run render --json results.json --aot-json aot.json

  # One train step configuration (any preset, batch, size, dtype, remat,
  # mesh), optionally interleaved with transformers' PyTorch ViTMAE:
  python -m benchmarks.run step --preset B/16 --batch 8 --torch
  python -m benchmarks.run step --preset L/16 --batch 4 --mask-tokens
  python -m benchmarks.run step --preset B/16 --batch 64 --remat dots --compile-only
  python -m benchmarks.run step --preset S/16 --batch 16 --mesh data=2 --dtype bfloat16

  # The machine's matmul rate, and the input pipeline alone:
  python -m benchmarks.run matmul --dtype float32 --size 2048
  python -m benchmarks.run input --images 256
  python -m benchmarks.run input --images 256 --avx2-code  # AVX2 code on an AVX-512 CPU

Thread counts: `--threads N` confines the process to N CPUs before JAX or
torch start (XLA's CPU pool follows the affinity mask; it has no thread
knob) and sets torch's intra-op threads to N, so both use the same count.
Nothing here is imported by the library; tests run it at tiny sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import tempfile
import time
from typing import Any

from benchmarks import common, measure, report
from mae_jax.model import flops  # plain Python: imports no jax

# ------------------------------------------------------------ the set ----


@dataclasses.dataclass
class StandardSet:
  """What `standard` measures. `tiny()` keeps every code path at toy sizes."""

  compare: list[tuple[str, dict, int]]  # (label, config fields, batch) vs torch
  mask_tokens: list[tuple[str, dict, int]]  # visible-only vs w/ [M]
  memory: list[tuple[str, dict, int]]  # compile-only, for each remat policy
  variants: list[tuple[str, dict]]  # changes to variants_base, interleaved with it
  variants_base: tuple[str, dict, int] | None = None
  finetune: list[tuple[str, dict, int]] = dataclasses.field(default_factory=list)
  finetune_steps: int = 5
  remat_policies: tuple[str, ...] = ("none", "full", "dots")
  compare_warmup: int = 2
  compare_steps: int = 12
  mask_warmup: int = 1
  mask_steps: int = 4
  variant_steps: int = 5
  matmul_size: int = 2048
  jpeg_images: int = 512
  jpeg_records: int = 65536  # the split's length, with links (jpegs.write_jpegs)
  jpeg_content: str = "natural"  # or "synthetic" (jpegs.CONTENTS)
  jpeg_fidelity_boxes: int = 256
  jpeg_image_size: int = 224
  jpeg_batch: int = 32
  jpeg_batches: int = 16
  digits_steps: int = 100
  digits_log_every: int = 20
  digits_overrides: dict | None = None
  tiny_sizes: bool = False

  @classmethod
  def full(cls) -> "StandardSet":
    return cls(
      compare=[("S/16", {"preset": "S/16"}, 8), ("B/16", {"preset": "B/16"}, 8)],
      mask_tokens=[("B/16", {"preset": "B/16"}, 8), ("L/16", {"preset": "L/16"}, 8)],
      memory=[
        ("B/16", {"preset": "B/16"}, 64),
        ("B/16 scan_layers", {"preset": "B/16", "scan_layers": True}, 64),
      ],
      variants_base=("B/16", {"preset": "B/16"}, 8),
      finetune=[("B/16", {"preset": "B/16"}, 8)],
      variants=[
        ("scan_layers", {"scan_layers": True}),
        ("remat=full", {"remat_policy": "full"}),
        ("remat=full, scan_layers", {"remat_policy": "full", "scan_layers": True}),
        ("bfloat16 compute", {"dtype": "bfloat16"}),
        ("jax.nn.dot_product_attention", {"attention_impl": None}),
        ("state not donated", {"donate": False}),
      ],
    )

  @classmethod
  def tiny(cls) -> "StandardSet":
    # Imported here: the harness starts no JAX before it sets its threads.
    from mae_jax.model.config import TINY

    small = {"preset": "tiny"}  # TINY, the tests' model
    return cls(
      compare=[("tiny", small, 4)],
      mask_tokens=[("tiny", small, 4)],
      memory=[("tiny", small, 8)],
      remat_policies=("full",),
      variants_base=("tiny", small, 4),
      finetune=[("tiny", small, 4)],
      finetune_steps=2,
      variants=[("state not donated", {"donate": False})],
      compare_warmup=1,
      compare_steps=2,
      mask_warmup=1,
      mask_steps=2,
      variant_steps=2,
      matmul_size=256,
      jpeg_images=8,
      jpeg_records=0,
      jpeg_fidelity_boxes=4,
      jpeg_image_size=32,
      jpeg_batch=4,
      jpeg_batches=2,
      digits_steps=4,
      digits_log_every=2,
      tiny_sizes=True,
      digits_overrides={
        **{f"model.{field}": value for field, value in TINY.items()},
        "data.image_size": TINY["image_size"],
        "global_batch_size": 16,
      },
    )


def run_standard(args, spec: StandardSet) -> dict:
  import torch

  previous_threads = torch.get_num_threads()
  try:
    return _run_standard(args, spec)
  finally:
    torch.set_num_threads(previous_threads)


def _run_standard(args, spec: StandardSet) -> dict:
  # Tiny sizes: one torch thread, which a loaded machine (tests) slows least.
  torch_threads = 1 if spec.tiny_sizes else args.cpus
  threads = common.thread_report(common.configure_torch_threads(torch_threads))
  results: dict[str, Any] = {
    "command": args.command_line,
    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "load_before": common.load_average(),
    "threads": threads,
    "machine": common.machine_report(),
    "tiny": spec.tiny_sizes,
  }
  start = time.perf_counter()
  dtype = args.dtype
  results["matmul_before"] = measure.measure_matmul(dtype, spec.matmul_size)
  results["compare"] = [
    measure.measure_compare(
      label, fields, batch, dtype=dtype, warmup=spec.compare_warmup, steps_count=spec.compare_steps
    )
    for label, fields, batch in spec.compare
  ]
  results["mask_tokens"] = [
    measure.measure_mask_tokens(
      label, fields, batch, dtype=dtype, warmup=spec.mask_warmup, steps_count=spec.mask_steps
    )
    for label, fields, batch in spec.mask_tokens
  ]
  results["variants"] = (
    measure.measure_variants(
      spec.variants_base, spec.variants, dtype=dtype, steps_count=spec.variant_steps
    )
    if spec.variants
    else []
  )
  results["finetune"] = [
    measure.measure_finetune(label, fields, batch, dtype=dtype, steps_count=spec.finetune_steps)
    for label, fields, batch in spec.finetune
  ]
  results["memory"] = [
    row
    for label, fields, batch in spec.memory
    for row in measure.measure_memory(
      label, fields, batch, dtype=dtype, policies=spec.remat_policies
    )
  ]
  results["matmul_after"] = measure.measure_matmul(dtype, spec.matmul_size)
  with tempfile.TemporaryDirectory() as scratch:
    results["input"] = measure.measure_input(os.path.join(scratch, "jpegs"), spec)
    if args.digits_metrics:
      from benchmarks import input_bench

      results["digits"] = input_bench.read_input_wait(args.digits_metrics)
      results["digits"]["source"] = f"existing run {portable_path(args.digits_metrics)}"
    else:
      from benchmarks import input_bench

      measure.log(f"digits pretraining, {spec.digits_steps} steps")
      results["digits"] = input_bench.digits_input_wait(
        os.path.join(scratch, "digits"),
        steps=spec.digits_steps,
        log_every=spec.digits_log_every,
        data_dir=args.digits_data_dir,
        overrides=spec.digits_overrides,
      )
    measure.log(f"  input wait {100 * results['digits']['input_wait_fraction']:.2f} %")
  results["aot"] = aot_reference(args.aot_json)
  results["load_after"] = common.load_average()
  results["wall_s"] = time.perf_counter() - start
  return results


def aot_reference(path: str = "") -> dict:
  """The pod-plan tool's prediction for an accelerator step: its JSON report
  (`python -m mae_jax.aot ... --json=PATH`, compile-only, needs libtpu) when
  one is given, else a pointer to the tool."""
  if path:
    with open(path) as f:
      report = json.load(f)
    report["source"] = portable_path(path)
    return report
  return {
    "pointer": "see mae_jax.aot: `python -m mae_jax.aot --config=configs/pretrain.py:"
    "vit_large --topology=v5p:4x4x4 --config.model.dtype=bfloat16 --json=PATH` "
    "(compile-only, needs libtpu), then `--aot-json PATH` here"
  }


# ------------------------------------------------------------- markdown --


def render(results: dict) -> str:
  return report.render(results)


# ------------------------------------------------------------------ CLI --


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.run",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  shared = argparse.ArgumentParser(add_help=False)
  shared.add_argument(
    "--threads", type=int, default=0, help="CPUs for XLA and torch (0 = all in the affinity mask)"
  )
  shared.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX starts")
  sub = parser.add_subparsers(dest="command", required=True)

  standard = sub.add_parser("standard", parents=[shared], help="the standard set -> BENCHMARKS.md")
  standard.add_argument("--out", default="BENCHMARKS.md")
  standard.add_argument("--json", default="", help="also write the raw results here")
  standard.add_argument("--tiny", action="store_true", help="toy sizes (tests)")
  standard.add_argument("--dtype", default="float32")
  standard.add_argument(
    "--digits-metrics",
    default="",
    help="read input_wait_fraction from this metrics.jsonl instead of "
    "running a short digits pretraining",
  )
  standard.add_argument("--digits-data-dir", default=None, help="TFDS dir for the digits")
  standard.add_argument(
    "--aot-json",
    default="",
    help="a `python -m mae_jax.aot --json` report to quote (predicted MFU)",
  )

  render_cmd = sub.add_parser(
    "render", parents=[shared], help="re-render BENCHMARKS.md from a standard set's --json"
  )
  render_cmd.add_argument("--json", required=True, help="results written by `standard --json`")
  render_cmd.add_argument("--out", default="BENCHMARKS.md")
  render_cmd.add_argument("--aot-json", default="", help="replace the quoted AOT report")

  step = sub.add_parser("step", parents=[shared], help="one mae_jax train step configuration")
  step.add_argument("--preset", default="B/16", help="Ti/16 S/16 B/16 L/16 H/14 or custom")
  step.add_argument("--model", default="", help="extra ModelConfig fields, k=v,k=v")
  step.add_argument("--batch", type=int, default=8)
  step.add_argument("--image-size", type=int, default=0)
  step.add_argument("--dtype", default="float32")
  step.add_argument("--remat", default="none")
  step.add_argument("--scan", action="store_true")
  step.add_argument("--mask-tokens", action="store_true", help='the "w/ [M]" encoder')
  step.add_argument("--attention", default="xla", help="mae_jax attention_impl (xla|cudnn|)")
  step.add_argument("--mesh", default="", help="e.g. data=2,fsdp=1,tensor=1")
  step.add_argument("--grad-accum", type=int, default=1)
  step.add_argument("--warmup", type=int, default=2)
  step.add_argument("--steps", type=int, default=10)
  step.add_argument(
    "--torch", action="store_true", help="interleave with transformers' PyTorch ViTMAE (same sizes)"
  )
  step.add_argument("--torch-attention", default="sdpa")
  step.add_argument("--compile-only", action="store_true", help="memory and FLOPs only")
  step.add_argument("--matmul", action="store_true", help="also measure the matmul peak")

  matmul = sub.add_parser("matmul", parents=[shared], help="the machine's matmul rate through XLA")
  matmul.add_argument("--dtype", default="float32")
  matmul.add_argument("--size", type=int, default=2048)
  matmul.add_argument("--chain", type=int, default=1)

  inputs = sub.add_parser("input", parents=[shared], help="JPEG input pipeline throughput")
  inputs.add_argument("--images", type=int, default=256)
  inputs.add_argument("--image-size", type=int, default=224)
  inputs.add_argument("--batches", type=int, default=16)
  inputs.add_argument("--content", default="natural", choices=("natural", "synthetic"))
  inputs.add_argument("--digits-metrics", default="", help="also read this run's input wait")
  inputs.add_argument(
    "--avx2-code",
    action="store_true",
    help="run the AVX2 code an AVX2-only CPU runs (on an AVX-512 CPU: its AVX-512 code off)",
  )
  return parser


def run_step(args) -> dict:
  from benchmarks import steps

  common.configure_torch_threads(args.cpus) if args.torch else None
  fields = {
    "preset": args.preset,
    "dtype": args.dtype,
    "remat_policy": args.remat,
    "scan_layers": args.scan,
    "encoder_mask_tokens": args.mask_tokens,
    "attention_impl": args.attention or None,
    **measure.parse_fields(args.model),
  }
  if args.image_size:
    fields["image_size"] = args.image_size
  label = f"{args.preset} batch {args.batch}"
  result: dict[str, Any] = {"load_before": common.load_average(), "threads": common.thread_report()}
  if args.matmul:
    result["matmul"] = measure.measure_matmul(args.dtype, 2048)
  mesh = common.parse_mesh(args.mesh)
  if args.compile_only:
    step = steps.MaeStep(
      measure.model_config_from(fields),
      args.batch,
      mesh=mesh,
      execute=False,
      grad_accum_steps=args.grad_accum,
    )
    result.update(
      label=label,
      compile_s=step.lower_s + step.compile_s,
      **step.cost(),
      **step.memory(),
      model_gflop_per_image=flops.train_flops_per_image(step.cfg) / 1e9,
    )
  elif args.torch:
    result.update(
      measure.measure_compare(
        label,
        fields,
        args.batch,
        dtype=args.dtype,
        warmup=args.warmup,
        steps_count=args.steps,
        attention=args.torch_attention,
        mesh=mesh,
      )
    )
  else:
    step = steps.MaeStep(
      measure.model_config_from(fields), args.batch, mesh=mesh, grad_accum_steps=args.grad_accum
    )
    timing = common.interleave({"mae_jax": step.run}, warmup=args.warmup, steps=args.steps)
    result.update(measure.step_row(label, step, timing["mae_jax"]))
  result["load_after"] = common.load_average()
  return result


def portable_path(arg: str) -> str:
  """An argument as it should appear in a committed report: absolute paths
  (`/x/y/results.json`, `--json=/x/y/results.json`) shortened to the file
  name, so that reports name no directory of the machine that made them."""
  prefix, sep, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
  return prefix + sep + os.path.basename(value) if os.path.isabs(value) else arg


def main(argv: list[str] | None = None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's start-up chatter
  args = build_parser().parse_args(argv)
  args.command_line = "python -m benchmarks.run " + " ".join(
    shlex.quote(portable_path(a)) for a in argv
  )
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  args.cpus = common.limit_cpus(args.threads)
  if args.command == "standard":
    spec = StandardSet.tiny() if args.tiny else StandardSet.full()
    results = run_standard(args, spec)
    text = render(results)
    with open(args.out, "w") as f:
      f.write(text)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    measure.log(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    return results
  if args.command == "render":
    with open(args.json) as f:
      results = json.load(f)
    if args.aot_json:
      results["aot"] = aot_reference(args.aot_json)
    # Results written before reports shortened paths still carry them.
    results["command"] = " ".join(
      shlex.quote(portable_path(a)) for a in shlex.split(results["command"])
    )
    results.setdefault("rendered_with", args.command_line)
    with open(args.out, "w") as f:
      f.write(render(results))
    measure.log(f"wrote {args.out} from {args.json}")
    return results
  if args.command == "step":
    result = run_step(args)
  elif args.command == "matmul":
    from benchmarks import steps

    result = steps.matmul_rate(args.dtype, args.size, chain=args.chain)
  else:
    with tempfile.TemporaryDirectory() as scratch:
      spec = dataclasses.replace(
        StandardSet.full(),
        jpeg_images=args.images,
        jpeg_image_size=args.image_size,
        jpeg_batches=args.batches,
        jpeg_content=args.content,
      )
      with measure.avx2_code(scratch) if args.avx2_code else contextlib.nullcontext():
        result = measure.measure_input(os.path.join(scratch, "jpegs"), spec)
      result["avx2_code"] = args.avx2_code
    if args.digits_metrics:
      from benchmarks import input_bench

      result["digits"] = input_bench.read_input_wait(args.digits_metrics)
  print(json.dumps(result, indent=1, default=str))
  return result


if __name__ == "__main__":
  main()
