r"""Curves of a pretraining run's metrics.jsonl, to hold a run against the reference log.

  python -m benchmarks.reference_curves                       # the shipped reference
  python -m benchmarks.reference_curves --metrics=runs/digits/metrics.jsonl \
      --out=runs/digits/curves.png --against=docs/reference/digits_pretrain_metrics.jsonl

Three panels over the steps: the training loss (the logged step's own and
the interval mean), the held-out reconstruction loss against the trivial
predictor's (predicting each patch's mean; above it the model has learnt
nothing), and the k-NN top-1 of the monitor. With `--against`, a second
run is drawn dashed in the same panels.
"""

from __future__ import annotations

import argparse
import json
import os

from mae_jax import storage

REFERENCE = os.path.join("docs", "reference", "digits_pretrain_metrics.jsonl")
REFERENCE_PNG = os.path.join("docs", "reference", "digits_pretrain_curves.png")


def read_metrics(path: str) -> dict[str, list[tuple[int, float]]]:
  """{metric: [(step, value), ...]} of a metrics.jsonl (one JSON object per line)."""
  series: dict[str, list[tuple[int, float]]] = {}
  with storage.path(path).open() as lines:  # a local file or a gs:// object
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise SystemExit(f"{path}:{number}: not JSON ({error}); is it a metrics.jsonl?")
      step = record.pop("step")
      for key, value in record.items():
        series.setdefault(key, []).append((step, float(value)))
  if "loss" not in series:
    raise SystemExit(f"{path} has no 'loss' records; is it a pretraining metrics.jsonl?")
  return series


PANELS = (
  ("training loss", (("loss", "loss (step)"), ("loss_avg", "loss (interval mean)"))),
  (
    "held-out loss",
    (("eval_loss", "eval loss"), ("eval_baseline_loss", "trivial predictor")),
  ),
  ("k-NN top-1 (%)", (("knn_top1", "k-NN top-1"),)),
)


def plot(runs: list[tuple[str, dict]], out: str) -> str:
  import matplotlib

  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6), layout="tight")
  for axis, (title, curves) in zip(axes, PANELS):
    for run_index, (label, series) in enumerate(runs):
      for curve_index, (key, name) in enumerate(curves):
        if key not in series:
          continue
        steps, values = zip(*series[key])
        axis.plot(
          steps,
          values,
          color=f"C{curve_index}",
          linestyle="-" if run_index == 0 else "--",
          marker="o" if len(steps) < 5 else None,
          label=f"{name} ({label})" if len(runs) > 1 else name,
        )
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  with storage.path(out).open("wb") as file:
    figure.savefig(file, format="png", dpi=110)
  plt.close(figure)
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--metrics", default=REFERENCE, help="a run's metrics.jsonl")
  parser.add_argument("--out", default=REFERENCE_PNG, help="the picture to write (.png)")
  parser.add_argument("--against", help="a second metrics.jsonl, drawn dashed")
  args = parser.parse_args(argv)
  runs = [(storage.basename(storage.parent(args.metrics)), read_metrics(args.metrics))]
  if args.against:
    runs.append(("reference", read_metrics(args.against)))
  print(f"wrote {plot(runs, args.out)}")


if __name__ == "__main__":
  main()
