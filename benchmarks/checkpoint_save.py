"""How long the training loop waits for a checkpoint: a local disk against a
Cloud Storage bucket (fake-gcs-server on 127.0.0.1), beside a step's time.

  python -m benchmarks.checkpoint_save [--preset=B/16] [--batch=8] [--steps=3]

The state is the pretraining step's own (parameters, AdamW's two moments,
the step and key: about 1.3 GB for ViT-B/16), saved with
`mae_jax.core.checkpointing.save` as the loop saves it: orbax copies the
arrays off the devices while the loop waits ("blocked"), then writes them in
the background while the next steps run ("in the background"; `--steps`
steps are timed meanwhile, and compared with steps timed with no save in
flight). Each target is saved twice: once waited for at once (the write's
own time), once with the steps running over it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax

from benchmarks import common, storage_server
from benchmarks.steps import MaeStep
from mae_jax.model.config import preset


def timed_save(step: MaeStep, directory: str, steps: int) -> dict:
  """Two saves of the state to `directory`: one waited for at once (how long
  the write takes by itself), one with `steps` steps run while it writes."""
  from mae_jax.core import checkpointing

  mngr = checkpointing.manager(directory, enable_async=True)
  figures = {}
  for save_step, during in ((1, 0), (2, steps)):
    start = time.perf_counter()
    checkpointing.save(mngr, save_step, step.state.to_checkpoint(), {"benchmark": True})
    blocked = time.perf_counter() - start
    step_times = [step.run() for _ in range(during)]  # the save is in flight meanwhile
    waiting = time.perf_counter()
    checkpointing.wait_for_saves(mngr)
    end = time.perf_counter()
    if during:
      figures.update(
        blocked_s_with_steps=blocked,
        left_after_steps_s=end - waiting,
        step_s_during_save=common.median(step_times),
      )
    else:
      figures.update(blocked_s=blocked, save_alone_s=end - start)
  mngr.close()
  return figures


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="B/16")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", default="", help="write the figures as JSON here")
  args = parser.parse_args(argv)

  root = tempfile.mkdtemp(prefix="mae_jax_save_bench_")
  server = storage_server.StorageServer(os.path.join(root, "data"), buckets=("bench",))
  os.environ.update(storage_server.environment(server.url))
  try:
    step = MaeStep(preset(args.preset), args.batch)
    step.run()  # warm
    alone = [step.run() for _ in range(args.steps)]
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(step.state))
    results = {
      "machine": common.machine_report(),
      "preset": args.preset,
      "batch": args.batch,
      "state_gb": state_bytes / 1e9,
      "step_s_alone": common.median(alone),
      "local disk": timed_save(step, os.path.join(root, "local"), args.steps),
      "bucket (fake-gcs-server, loopback)": timed_save(
        step, "gs://bench/run/checkpoints", args.steps
      ),
    }
  finally:
    server.stop()
    shutil.rmtree(root, ignore_errors=True)
  print(
    f"{args.preset} training state: {results['state_gb']:.2f} GB; one step (batch "
    f"{args.batch}) {results['step_s_alone']:.2f} s with no save in flight"
  )
  for where in ("local disk", "bucket (fake-gcs-server, loopback)"):
    r = results[where]
    print(
      f"  {where:36s} the loop waits {r['blocked_s']:.2f} s ({r['blocked_s_with_steps']:.2f} s); "
      f"the write takes {r['save_alone_s']:.2f} s by itself; {args.steps} steps during it "
      f"take {r['step_s_during_save']:.2f} s each, then {r['left_after_steps_s']:.2f} s left"
    )
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
  return results


if __name__ == "__main__":
  main()
