r"""The honest numbers on the bundled digits, in one command:

  python -m benchmarks.digits_report --workdir=runs/digits_eval

1. pretrains `configs/pretrain.py:digits` in WORKDIR/pretrain (or resumes
   it; a finished run is reused);
2. evaluates on the fixed 300-image test split, with the digits presets of
   configs/linprobe.py, configs/knn.py and configs/finetune.py:
     linear probe and k-NN of (a) the MAE encoder, (b) the same
     architecture at random initialisation, (c) raw pixels (the same
     BN + linear classifier / the same k-NN on the flattened image);
     fine-tuning from (a) and from scratch (layer decay 1: there are no
     pretrained layers to preserve);
3. writes WORKDIR/report.json and the table into docs/evaluation.md between the
   `digits-eval` markers, with this command and the wall times.

Each step is an ordinary job in WORKDIR/<name>, so an interrupted report
resumes where it stopped when run again.
"""

from __future__ import annotations

import json
import os
import re
import time

from absl import app, flags

from benchmarks.common import machine_report
from mae_jax.jobs import run_job

_WORKDIR = flags.DEFINE_string("workdir", "runs/digits_eval", "Where every run goes.")
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  None,
  "TFDS data_dir for the digits (default: the TFDS default, as the pretraining command).",
)
_README = flags.DEFINE_string(
  "readme", "docs/evaluation.md", "Markdown file to update; empty: do not write."
)

COMMAND = "python -m benchmarks.digits_report --workdir=runs/digits_eval"
START, END = "<!-- digits-eval:start -->", "<!-- digits-eval:end -->"


def _config(module_name: str, preset: str, data_dir: str | None, **fields):
  import importlib

  config = importlib.import_module(f"configs.{module_name}").get_config(preset)
  config.data.data_dir = data_dir
  config.progress_bar = "off"
  for key, value in fields.items():
    config[key] = value
  return config


def runs(pretrain_dir: str) -> list[tuple[str, str, str, dict]]:
  """(run name, config module, preset, fields) of every evaluation."""
  mae = dict(init_from=pretrain_dir)
  return [
    ("linprobe_mae", "linprobe", "digits", mae),
    ("linprobe_random", "linprobe", "digits", dict(baseline="random_init")),
    ("linprobe_pixels", "linprobe", "digits", dict(baseline="raw_pixels")),
    ("knn_mae", "knn", "digits", mae),
    ("knn_random", "knn", "digits", dict(baseline="random_init")),
    ("knn_pixels", "knn", "digits", dict(baseline="raw_pixels")),
    # The reference probes the cls token; MAE's loss never reads it directly,
    # so the pooled patch tokens are shown too.
    ("linprobe_mae_pool", "linprobe", "digits", dict(mae, feature="pool")),
    ("linprobe_random_pool", "linprobe", "digits", dict(baseline="random_init", feature="pool")),
    ("knn_mae_pool", "knn", "digits", dict(mae, feature="pool")),
    ("knn_random_pool", "knn", "digits", dict(baseline="random_init", feature="pool")),
    ("finetune_mae", "finetune", "digits", mae),
    ("finetune_scratch", "finetune", "digits,scratch", {}),
  ]


def table(results: dict, seconds: dict) -> str:
  def cell(name):
    return f"{results[name]['top1']:.1f}" if name in results else "n/a"

  probe = _config("linprobe", "digits", None)
  fine = _config("finetune", "digits", None)
  lines = [
    "| Digits test split (300 images), top-1 % | MAE-pretrained encoder | "
    "Same ViT, random init | Raw pixels |",
    "|---|---|---|---|",
    f"| Linear probe (reference): cls token, BN + linear, LARS, "
    f"{probe.num_epochs:.0f} epochs | {cell('linprobe_mae')} | {cell('linprobe_random')} | "
    f"{cell('linprobe_pixels')} |",
    f"| Linear probe, mean-pooled patch tokens | {cell('linprobe_mae_pool')} | "
    f"{cell('linprobe_random_pool')} | (same as above) |",
    f"| k-NN: cosine, k = 20, T = 0.07, cls token | {cell('knn_mae')} | "
    f"{cell('knn_random')} | {cell('knn_pixels')} |",
    f"| k-NN, mean-pooled patch tokens | {cell('knn_mae_pool')} | "
    f"{cell('knn_random_pool')} | (same as above) |",
    f"| Fine-tuning: {fine.num_epochs:.0f} epochs, ViT-B recipe at base lr "
    f"{fine.optimizer.base_lr:g} (MAE init vs from scratch) | {cell('finetune_mae')} | "
    f"{cell('finetune_scratch')} | — |",
  ]
  total = sum(seconds.values())
  timing = ", ".join(
    f"{name} {seconds[name] / 60:.1f}"
    for name in ("pretrain", "linear probes", "k-NN", "fine-tuning")
    if name in seconds
  )
  machine = machine_report()
  kind = "AVX-512" if "avx512f" in machine["cpu_flags"] else "AVX2-only"
  return "\n".join(
    [
      f"Made by `{COMMAND}` in {total / 60:.1f} minutes on {machine['logical_cpus']} cores of "
      f"an {kind} CPU ({machine['cpu']}, flags {' '.join(machine['cpu_flags'])}; minutes: "
      f"{timing}).",
      "",
      *lines,
    ]
  )


def write_readme(path: str, text: str) -> None:
  with open(path) as f:
    readme = f.read()
  if START not in readme or END not in readme:
    raise ValueError(f"{path} has no {START} ... {END} markers to write the table between.")
  block = f"{START}\n{text}\n{END}"
  readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, readme, flags=re.S)
  with open(path, "w") as f:
    f.write(readme)


def main(argv):
  del argv
  from mae_jax.log_filters import quiet_library_info

  quiet_library_info()
  workdir, data_dir = _WORKDIR.value, _DATA_DIR.value
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  pretrain_dir = os.path.join(workdir, "pretrain")
  run_job(_config("pretrain", "digits", data_dir), pretrain_dir)
  seconds["pretrain"] = time.perf_counter() - start
  results = {}
  stage_of = {"linprobe": "linear probes", "knn": "k-NN", "finetune": "fine-tuning"}
  for name, module, preset, fields in runs(pretrain_dir):
    start = time.perf_counter()
    results[name] = run_job(
      _config(module, preset, data_dir, **fields), os.path.join(workdir, name)
    )
    stage = stage_of[module]
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
  text = table(results, seconds)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(
      {
        "seconds": seconds,
        "top1": {name: r["top1"] for name, r in results.items()},
        "top5": {name: r.get("top5") for name, r in results.items()},
      },
      f,
      indent=2,
    )
  print("\n" + text, flush=True)
  if _README.value:
    write_readme(_README.value, text)
    print(f"\nTable written into {_README.value}.")


if __name__ == "__main__":
  app.run(main)
