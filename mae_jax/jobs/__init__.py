"""The jobs, one module each, and the table `mae_jax.main` and `mae_jax.aot` read.

Each job is a function `(config, workdir)` that tests call directly; a
training job also names the builder of its step program (the step engine,
`mae_jax.core.train_step`), which the AOT planner lowers for a pod.

The jobs are pretraining, the linear probe, fine-tuning and k-NN (one
module each; the module map is docs/architecture.md).

Entries are "module:function" strings, imported when used, so reading the
table (the command line's checks) imports no JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from mae_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Job:
  run: str  # "module:function", (config, workdir) -> results
  program: str | None  # "module:function", (config, plan, mesh) -> StepProgram; None: no training
  plan: str  # "module:function", (config, *, num_devices, process_count, known_dataset) -> plan


TRAINING_PLAN = "mae_jax.core.plan:make_plan"
EVAL_PLAN = "mae_jax.evaluate.plan:make_eval_plan"

JOBS = {
  "pretrain": Job(
    "mae_jax.jobs.pretrain:train_and_evaluate",
    "mae_jax.jobs.pretrain_step:pretraining_program",
    TRAINING_PLAN,
  ),
  "linprobe": Job(
    "mae_jax.jobs.linprobe:run_linear_probe", "mae_jax.jobs.linprobe:probe_program", EVAL_PLAN
  ),
  "finetune": Job(
    "mae_jax.jobs.finetune:run_finetune", "mae_jax.jobs.finetune:finetune_program", EVAL_PLAN
  ),
  "knn": Job("mae_jax.jobs.knn:run_knn", None, EVAL_PLAN),
}


def job_of(config) -> Job:
  name = config.get("job", "pretrain")
  if name not in JOBS:
    raise ConfigError(f"config.job={name!r} is unknown: one of {sorted(JOBS)}.")
  return JOBS[name]


def resolve(target: str) -> Callable:
  module, _, function = target.partition(":")
  return getattr(importlib.import_module(module), function)


def run_job(config, workdir: str):
  """Runs the job `config.job` names (default "pretrain"), holding the
  workdir's lease throughout: one run per workdir (`mae_jax.core.lease`)."""
  from mae_jax.core import lease

  run = resolve(job_of(config).run)
  with lease.holding(workdir):
    return run(config, workdir)
