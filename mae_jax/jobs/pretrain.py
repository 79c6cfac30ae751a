"""MAE pretraining as one function: `train_and_evaluate(config, workdir)`.

Reads top to bottom: plan (validate the config) -> mesh -> the workdir's
checkpoints -> the jitted sharded train step (`mae_jax.core.train_step`)
-> resume from the workdir, or initialise -> the step loop
(`mae_jax.core.loop`) with evaluation and the k-NN monitor as hooks ->
reconstruction picture.

Resume order: the workdir's own newest checkpoint, else `config.init_from`
(parameters only), else a fresh initialisation.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import ml_collections
from absl import logging

from mae_jax import storage
from mae_jax.core import batches as batches_lib
from mae_jax.core import checkpointing, pretrained
from mae_jax.core import plan as plan_lib
from mae_jax.core import workdir as workdir_lib
from mae_jax.core.loop import Periodic, run_steps
from mae_jax.core.state import mesh_context
from mae_jax.evaluators import knn
from mae_jax.evaluators.reconstruction import reconstruction_evaluator, write_reconstructions
from mae_jax.jobs.pretrain_step import pretraining_program

# start step -> this host's batches from there on (numpy, the pipeline's format).
HostBatches = Callable[[int], Iterator[dict]]


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, train_batches: HostBatches | None = None
) -> dict:
  """Pretrains (or resumes) and returns the final metrics.

  `train_batches` replaces the training split's pipeline (tests feed
  damaged or signalling streams through it); evaluation still reads
  `config.data`.
  """
  plan = plan_lib.make_plan(
    config, num_devices=jax.device_count(), process_count=jax.process_count()
  )
  mesh = plan.make_mesh()
  is_main = jax.process_index() == 0
  checkpoint_dir = workdir_lib.checkpoint_dir(workdir)
  metadata = plan.metadata
  mngr, resume_step = workdir_lib.open_run(workdir, plan, mesh, is_main=is_main)
  # Whatever happens (an error, a preemption), a save in flight completes:
  # saved work is never lost to an exception. A save that fails (disk full)
  # raises CheckpointSaveError naming the checkpoints that are still intact.
  with checkpointing.completing_saves(mngr):
    final, picture = _pretrain(
      config, workdir, plan, mesh, mngr, metadata, resume_step, is_main, train_batches
    )
  if is_main:
    knn_text = f", k-NN top-1 {final['knn_top1']:.1f} %" if "knn_top1" in final else ""
    print(
      f"\nPretraining finished at step {final['step']}: eval loss "
      f"{final.get('eval_loss', float('nan')):.4f} (trivial predictor "
      f"{final.get('eval_baseline_loss', float('nan')):.4f}){knn_text}.\n"
      f"  checkpoints:     {checkpoint_dir}\n"
      f"  metrics:         {storage.join(workdir, 'metrics.jsonl')}\n"
      f"  tensorboard:     {storage.join(workdir, 'tensorboard')}\n"
      f"  reconstructions: {picture}",
      flush=True,
    )
  return final


def _pretrain(config, workdir, plan, mesh, mngr, metadata, resume_step, is_main, train_batches):
  # A mistake in init_from is found before anything compiles.
  start_from = None
  if resume_step is None and config.init_from:
    start_from = pretrained.locate(config.init_from)
    checkpointing.check_architecture(start_from.directory, start_from.metadata, plan.model)
  program = pretraining_program(config, plan, mesh)
  shardings = program.state_shardings
  if resume_step is not None:
    logging.info("Resuming from %s step %d.", mngr.directory, resume_step)
    with mesh_context(mesh, plan.rules):
      state = checkpointing.restore_run_state(
        str(mngr.directory), resume_step, program.abstract_state
      )
  elif start_from is not None:
    # Groups the checkpoint lacks (the decoder of an encoder-only file) keep
    # their fresh initialisation; AdamW's initial state does not depend on
    # the values.
    state = program.initial_state()
    with mesh_context(mesh, plan.rules):
      restored = pretrained.restore_pretraining_params(start_from, plan.model, mesh, plan.rules)
    logging.info("Initialised %s from %s.", sorted(restored), start_from.describe())
    state = state.replace(params={**state.params, **restored})
  else:
    logging.info("Initialising from scratch (seed %d).", config.seed)
    state = program.initial_state()

  if train_batches is None:
    train_batches = lambda start: batches_lib.train_split_batches(plan.inputs, start)  # noqa: E731
  with mesh_context(mesh, plan.rules):
    evaluate = reconstruction_evaluator(
      plan, program, shardings.params, max_batches=config.eval_batches
    )
    hooks = [Periodic(config.eval_every_steps, lambda s: evaluate(s.params))]
    if config.knn_every_steps > 0:
      # Batches of the eval micro-batch size, which the training step already
      # fits in memory. No random numbers: the train stream is left untouched.
      monitor = knn.knn_evaluator(
        plan,
        mesh,
        program.batch_sharding,
        features_fn=knn.monitor_features(plan),
        batch_size=plan.micro_batch_size,
      )
      hooks.append(
        Periodic(config.knn_every_steps, lambda s: monitor(s.params["encoder"]), 2, timed=True)
      )
    state, final = run_steps(
      plan.loop,
      workdir,
      mngr,
      metadata,
      state,
      program.step,
      lambda start: batches_lib.device_prefetch(
        train_batches(start), program.batch_sharding, size=config.device_prefetch
      ),
      hooks,
      is_main=is_main,
    )
    picture = write_reconstructions(
      plan, workdir, program, state.params, is_main, count=config.num_reconstructions
    )
  return final, picture
