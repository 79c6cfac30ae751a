r"""Where the time of a train step goes: a `jax.profiler` trace, summarised.

  python -m benchmarks.profile --preset B/16 --batch 8            # top ops
  python -m benchmarks.profile --preset B/16 --batch 8 --trace-dir /tmp/trace --hlo step.hlo

Runs a few steps of the real train step under `jax.profiler`, then reads the
trace (`jax.profiler.ProfileData`) and prints the time per step of each
compiled operation, grouped two ways: by kind of XLA operation (a matmul
fusion, an elementwise loop fusion, a copy, ...) and by the model operation
it came from (XLA's `op_name` metadata, layers merged). On CPU the times are
summed over the threads that ran the operations; the matmul library also
uses the other thread for its own work without reporting it, so read the
shares, not the totals. `--trace-dir` keeps the trace for TensorBoard /
Perfetto; `--hlo` writes the optimised HLO (`compiled.as_text()`).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile


def summarise(trace_dir: str, hlo_text: str, steps: int, top: int) -> str:
  from jax.profiler import ProfileData

  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
  data = ProfileData.from_file(sorted(files)[-1])
  durations: collections.Counter = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for event in line.events:
        if "Execute" in event.name or "Await" in event.name or event.name.startswith("end:"):
          continue
        durations[event.name] += event.duration_ns
  # Instruction name -> model op_name, from the entry computation.
  entry = hlo_text[hlo_text.find("\nENTRY") :]
  origin = {}
  for line in entry.splitlines():
    match = re.match(r"\s+%(\S+) = \S+ [\w-]+\(", line)
    if match:
      op_name = re.search(r'op_name="([^"]*)"', line)
      name = op_name.group(1) if op_name else ""
      name = re.sub(r"^jit\([^)]*\)/", "", name)
      origin[match.group(1)] = re.sub(r"layer_\d+", "layer_*", name)
  total = sum(durations.values()) or 1
  by_kind: collections.Counter = collections.Counter()
  by_origin: collections.Counter = collections.Counter()
  for name, ns in durations.items():
    kind = re.sub(r"\.\d+$", "", name)
    by_kind[kind] += ns
    by_origin[(kind, origin.get(name, "(inside a control-flow op or unnamed)"))] += ns
  lines = [
    f"Thread time per step, {total / steps / 1e6:.0f} ms in all "
    "(summed over threads; shares are what to read)",
    "",
    "By kind of operation:",
  ]
  for kind, ns in by_kind.most_common(top):
    lines.append(f"  {ns / steps / 1e6:8.1f} ms {100 * ns / total:5.1f} %  {kind}")
  lines += ["", "By model operation (layers merged):"]
  for (kind, name), ns in by_origin.most_common(top):
    lines.append(
      f"  {ns / steps / 1e6:8.1f} ms {100 * ns / total:5.1f} %  {kind[:24]:24s} {name[:110]}"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.profile",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--preset", default="B/16")
  parser.add_argument("--model", default="", help="extra ModelConfig fields, k=v,k=v")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=30)
  parser.add_argument("--trace-dir", default="")
  parser.add_argument("--hlo", default="")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  import jax

  from benchmarks import measure, steps

  fields = {"preset": args.preset, "dtype": args.dtype, **measure.parse_fields(args.model)}
  step = steps.MaeStep(measure.model_config_from(fields), args.batch)
  for _ in range(2):
    step.run()
  hlo = step.compiled.as_text()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(hlo)
  with tempfile.TemporaryDirectory() as scratch:
    trace_dir = args.trace_dir or scratch
    jax.profiler.start_trace(trace_dir)
    for _ in range(args.steps):
      step.run()
    jax.profiler.stop_trace()
    text = summarise(trace_dir, hlo, args.steps, args.top)
  print(text)
  return text


if __name__ == "__main__":
  main()
