"""The k-NN evaluation as a job: `run_knn(config, workdir)` (config.job = "knn").

Features of the train and eval splits (eval transform, no augmentation)
from the frozen encoder (or a baseline): the k-NN evaluator
(`mae_jax.evaluators.knn`) run once. Nothing
is trained, so there are no checkpoints; metrics.jsonl gets one line at
the step of the checkpoint evaluated, and results.json the accuracies.
"""

from __future__ import annotations

import jax

from mae_jax.core import sharding
from mae_jax.core.metrics import MetricsWriter
from mae_jax.core.state import mesh_context
from mae_jax.core.workdir import check_workdir_writable, write_run_info
from mae_jax.evaluate.encoders import feature_source, frozen_encoder
from mae_jax.evaluate.plan import make_eval_plan
from mae_jax.evaluators import knn
from mae_jax.jobs import eval_common as job_lib


def run_knn(config, workdir: str) -> dict:
  plan = make_eval_plan(config, num_devices=jax.device_count(), process_count=jax.process_count())
  mesh = plan.make_mesh()
  is_main = jax.process_index() == 0
  # No checkpoints of its own: only the writable workdir of every job's start.
  check_workdir_writable(workdir)
  write_run_info(workdir, plan, mesh, None, enabled=is_main)
  batch_sharding = sharding.batch_sharding(mesh, plan.rules)
  with mesh_context(mesh, plan.rules):
    features_fn, encoder_params = frozen_encoder(config, plan, mesh, jax.random.key(config.seed))
    evaluate = knn.knn_evaluator(
      plan, mesh, batch_sharding, features_fn=features_fn, batch_size=plan.eval_batch_size
    )
    metrics = evaluate(encoder_params)
  step = plan.init.step if plan.init else 0
  # start_step one below: a rerun replaces its line instead of repeating it.
  writer = MetricsWriter(workdir, start_step=step - 1, enabled=is_main)
  writer.write(step, metrics)
  writer.close()
  final = {f"eval_{key[len('knn_') :]}": value for key, value in metrics.items()}
  results = job_lib.write_results(
    workdir,
    config,
    plan,
    final,
    step=step,
    is_main=is_main,
    extra={"k": config.knn_k, "temperature": config.knn_temperature},
  )
  job_lib.print_summary(
    f"k-NN (k={config.knn_k}, T={config.knn_temperature})",
    feature_source(config),
    results,
    workdir,
    is_main,
  )
  return results
