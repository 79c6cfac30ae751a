"""What the evaluation jobs share: the start (plan, mesh, the workdir's
checkpoints, the state to start from, the labelled streams), results.json
and the summary. Their schedule is `core.optim.schedule_of`, their accuracy
`evaluators.accuracy`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
from absl import logging

from mae_jax import storage
from mae_jax.core import batches as batches_lib
from mae_jax.core import checkpointing, sharding
from mae_jax.core.workdir import open_run
from mae_jax.evaluate.plan import PROTOCOLS, make_eval_plan

# ---------------------------------------------------------------- workdir --


@dataclasses.dataclass(frozen=True)
class JobSetup:
  """What every training evaluation job (probe, fine-tuning) starts from."""

  plan: Any
  mesh: Any
  is_main: bool
  mngr: Any  # the workdir's CheckpointManager
  resume_step: int | None
  metadata: dict
  batch_sharding: Any
  replicated: Any

  def starting_state(self, program, what: str):
    """(state, resumed): the workdir's newest checkpoint restored into the
    program's shardings, or the program's fresh state."""
    if self.resume_step is None:
      return program.initial_state(), False
    logging.info("Resuming %s from step %d.", what, self.resume_step)
    directory = str(self.mngr.directory)
    return checkpointing.restore_run_state(
      directory, self.resume_step, program.abstract_state
    ), True

  def split_batches(self, split: str):
    """One padded pass over `split` (eval transform), labelled global batches."""
    plan = self.plan
    return batches_lib.split_batches(
      plan.inputs, split, plan.eval_batch_size, self.batch_sharding, plan.num_classes
    )

  def eval_batches(self):
    return self.split_batches(self.plan.inputs.data.eval_split)

  def train_batches(self, host_batches=None):
    """start step -> labelled global training batches, from the training
    split's pipeline or `host_batches` (start step -> this host's numpy
    batches: tests feed damaged or signalling streams through it)."""
    plan = self.plan
    host_batches = host_batches or (
      lambda start: batches_lib.train_split_batches(plan.inputs, start)
    )
    return lambda start: batches_lib.labelled_train_batches(
      host_batches(start), self.batch_sharding, plan.num_classes
    )


def start_job(config, workdir: str) -> JobSetup:
  """Validates the config (before any compile), builds the mesh, opens the
  workdir's checkpoints."""
  plan = make_eval_plan(config, num_devices=jax.device_count(), process_count=jax.process_count())
  mesh = plan.make_mesh()
  is_main = jax.process_index() == 0
  # A workdir of another experiment is refused before anything is touched.
  mngr, resume_step = open_run(workdir, plan, mesh, is_main=is_main)
  return JobSetup(
    plan=plan,
    mesh=mesh,
    is_main=is_main,
    mngr=mngr,
    resume_step=resume_step,
    metadata=plan.metadata,
    batch_sharding=sharding.batch_sharding(mesh, plan.rules),
    replicated=sharding.replicated(mesh),
  )


def write_results(
  workdir: str, config, plan, metrics: dict, *, step: int, is_main: bool, extra: dict | None = None
) -> dict:
  """results.json: the final accuracies (percent), where they came from, the config."""
  results = {
    "protocol": PROTOCOLS[config.job],
    "top1": metrics["eval_top1"],
    **({"top5": metrics["eval_top5"]} if "eval_top5" in metrics else {}),
    "num_classes": plan.num_classes,
    "eval_split": config.data.eval_split,
    "num_eval_examples": plan.num_eval_examples,
    "feature": "pixels" if config.baseline == "raw_pixels" else config.feature,
    "checkpoint": plan.init.describe() if plan.init else {"baseline": config.baseline},
    "step": step,
    **(extra or {}),
    "config": json.loads(config.to_json_best_effort()),
  }
  if is_main:
    storage.write_text(storage.join(workdir, "results.json"), json.dumps(results, indent=2))
  return results


def print_summary(title: str, feature: str, results: dict, workdir: str, is_main: bool) -> None:
  if not is_main:
    return
  top5 = f", top-5 {results['top5']:.2f} %" if "top5" in results else ""
  origin = results["checkpoint"]
  origin = (
    f"{origin['path']} step {origin['step']}"
    if "path" in origin
    else f"baseline {origin['baseline']}"
  )
  print(
    f"\n{title} ({feature} features, {origin}): top-1 {results['top1']:.2f} %{top5} "
    f"on {results['num_eval_examples']} {results['eval_split']} images.\n"
    f"  results: {storage.join(workdir, 'results.json')}\n"
    f"  metrics: {storage.join(workdir, 'metrics.jsonl')}",
    flush=True,
  )
