"""`python -m mae_jax.aot`: flags, the plan, its report, the exit status."""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from mae_jax import storage
from mae_jax.aot import topologies
from mae_jax.aot.planner import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT, check_plan
from mae_jax.aot.report import format_report
from mae_jax.cli import command_line
from mae_jax.errors import UserError


def main(argv, config, options) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=EXIT_BAD_INPUT)
  if config.value is None or not options["topology"].value:
    raise app.UsageError("--config and --topology are required.", exitcode=EXIT_BAD_INPUT)
  # Compile-only TPU devices come from libtpu directly; the runtime itself
  # stays on the CPU even where libtpu is importable.
  jax.config.update("jax_platforms", "cpu")
  try:
    topology = topologies.parse(options["topology"].value, options["num_slices"].value)
    hbm_gib = options["hbm_gib"].value
    report = check_plan(
      config.value,
      topology,
      hbm_bytes=int(hbm_gib * 1024**3) if hbm_gib else None,
      evaluations=options["evaluations"].value,
    )
  except UserError as error:  # a mistake in the command; a bug keeps its traceback
    print(f"error: {error}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  print(format_report(report), flush=True)
  if options["json"].value:
    with storage.path(options["json"].value).open("w") as f:
      json.dump(dataclasses.asdict(report), f, indent=2)
  if not report.fits:
    sys.exit(EXIT_DOES_NOT_FIT)


def run_cli() -> None:
  # Flags are defined here, not at import: tests import this module next to
  # mae_jax.main, which defines --config too.
  config = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pretrain.py:vit_huge.", lock_config=True
  )
  options = {
    "topology": flags.DEFINE_string(
      "topology",
      None,
      "TPU slice as CHIP:SHAPE (v4:4x4x4, v5e:8x8, v5p:4x4x8, "
      "v6e:8x16), or 'cpu' / 'cpu:N' for this machine's devices.",
    ),
    "num_slices": flags.DEFINE_integer("num_slices", 1, "Slices of that shape."),
    "hbm_gib": flags.DEFINE_float(
      "hbm_gib", None, "Memory per chip to check against, instead of the chip's HBM."
    ),
    "json": flags.DEFINE_string("json", None, "Also write the report as JSON here."),
    "evaluations": flags.DEFINE_boolean(
      "evaluations",
      True,
      "Also plan the evaluation programs (--noevaluations: the train step only, sooner).",
    ),
  }
  app.run(lambda argv: main(argv, config, options), flags_parser=command_line.parse_flags)
