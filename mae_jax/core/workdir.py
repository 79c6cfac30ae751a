"""The workdir: writable before anything expensive, one experiment per workdir,
and the run's resolved config and environment written at the start."""

from __future__ import annotations

import json
import sys

import jax
import optax
from absl import logging

from mae_jax import storage
from mae_jax.core import checkpointing
from mae_jax.errors import WorkdirError


def check_workdir_writable(workdir: str) -> None:
  """Fails at once, not at the first checkpoint an hour later."""
  probe = storage.path(workdir, f".write_test_{jax.process_index()}")
  try:
    storage.makedirs(workdir)  # a bucket is never created: a typo must not make one
    probe.write_text("ok")
    probe.unlink()
  except Exception as error:  # OSError locally; gcsfs and google-auth raise their own
    raise WorkdirError(
      f"cannot write to --workdir={workdir!r} ({storage.describe_error(error)}); choose a "
      "writable directory, or a bucket that exists and that these credentials may write."
    ) from error


def open_run(workdir: str, plan, mesh, *, is_main: bool):
  """The start of every job, pretraining and evaluation alike: the workdir
  is writable, its checkpoints are of this experiment (`plan.metadata`),
  run_info.json is written. Returns (the run's CheckpointManager, the step
  to resume from, or None for a new run); `checkpointing.restore_run_state`
  then restores it."""
  check_workdir_writable(workdir)
  directory = checkpoint_dir(workdir)
  mngr = checkpointing.manager_for_run(directory, plan.checkpoints)
  try:
    resume_step = mngr.latest_step()
    if resume_step is not None:
      check_same_experiment(directory, mngr, resume_step, plan.metadata)
    write_run_info(workdir, plan, mesh, resume_step, enabled=is_main)
  except BaseException:
    checkpointing.finish(mngr, after_error=True, quiet=True)
    raise
  return mngr, resume_step


def check_same_experiment(directory, mngr, step, metadata) -> None:
  import orbax.checkpoint as ocp

  saved = mngr.restore(
    step, args=ocp.args.Composite(**{checkpointing.METADATA: ocp.args.JsonRestore()})
  )[checkpointing.METADATA]
  saved_identity, current = saved.get("experiment", {}), metadata["experiment"]
  differences = [
    f"{key}: workdir {saved_identity.get(key)!r} vs config {current[key]!r}"
    for key in current
    if saved_identity.get(key) != current[key]
  ]
  if differences:
    raise WorkdirError(
      f"the workdir's checkpoints ({directory}, step {step}) belong to another experiment: "
      + "; ".join(differences)
      + ". Nothing was changed. Use a new --workdir, or the config that wrote it."
    )


def write_run_info(workdir, plan, mesh, resume_step, *, enabled: bool) -> None:
  """The resolved config (as the plan recorded it) and the run's
  environment, at the top of the log and in the workdir."""
  import flax
  import grain
  import orbax.checkpoint as ocp

  info = {
    "versions": {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "orbax": getattr(ocp, "__version__", "?"),
      "grain": getattr(grain, "__version__", "?"),
      "python": sys.version.split()[0],
    },
    "devices": {
      "kind": jax.devices()[0].device_kind,
      "count": jax.device_count(),
      "processes": jax.process_count(),
      "platform": jax.default_backend(),
    },
    "mesh": dict(mesh.shape),
    "resume": (
      f"resuming from step {resume_step}" if resume_step is not None else "starting from scratch"
    ),
    "plan": {
      "total_steps": plan.total_steps,
      "steps_per_epoch": plan.steps_per_epoch,
      "warmup_steps": plan.warmup_steps,
      "micro_batch_size": plan.micro_batch_size,
      "train_examples": plan.num_train_examples,
      "eval_examples": plan.num_eval_examples,
    },
  }
  logging.info("Run info: %s", json.dumps(info))
  config_text = json.dumps(plan.metadata["config"], indent=2)
  logging.info("Config:\n%s", config_text)
  if enabled:
    storage.write_text(storage.join(workdir, "config.json"), config_text)
    storage.write_text(storage.join(workdir, "run_info.json"), json.dumps(info, indent=2))


def checkpoint_dir(workdir: str) -> str:
  """Where a job keeps its own checkpoints."""
  return storage.join(workdir, "checkpoints")


def experiment_identity(config, **job_fields) -> dict:
  """The settings a resumed run must share with the run that wrote the
  workdir: the architecture, the data, the seed and the global batch, plus
  what the job adds (an evaluation job: which job, its encoder, its classes)."""
  arch = {name: config.model[name] for name in checkpointing.ARCHITECTURE_FIELDS}
  return {
    "model": arch,
    "data_source": config.data.source,
    "data_name": config.data.name,
    "seed": config.seed,
    "global_batch_size": config.global_batch_size,
    **job_fields,
  }


def checkpoint_metadata(config, model_config, identity: dict, source: str) -> dict:
  """What every checkpoint of a run records about the run that wrote it."""
  return {
    "model": checkpointing.model_metadata(model_config),
    "param_layout": "layers" if model_config.scan_layers else "layer_i",
    "experiment": identity,
    "source": source,
    "config": json.loads(config.to_json_best_effort()),
  }
