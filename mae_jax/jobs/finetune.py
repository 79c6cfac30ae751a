"""End-to-end fine-tuning: `run_finetune(config, workdir)` (config.job = "finetune").

Reference recipe (main_finetune.py): the pretrained encoder plus a head
(global average pool of the patch tokens -> fc_norm -> Linear with std
2e-5); AdamW (0.9, 0.999), weight decay 0.05 on kernels only, layer-wise
lr decay, drop path, Mixup 0.8 / CutMix 1.0 (switch 0.5) with label
smoothing 0.1 (on the device, in the step), RandAugment (9, 0.5) on the
host and random erasing 0.25 (its box drawn on the host, its noise added
in the step, after normalisation and before mixing, as the reference), lr = base_lr * batch / 256 with warm-up then
cosine to min_lr, where batch is the global batch also under gradient
accumulation (`grad_accum_steps`, the reference's accum_iter).
`config.baseline = "random_init"` trains the same network from its
initialisation ("from scratch").

The whole classifier is trained, so its state is pretraining's
`TrainState` and it checkpoints and resumes the same way.
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from mae_jax.core import checkpointing, optim, pretrained
from mae_jax.core.batches import labelled_batch_fields
from mae_jax.core.loop import Periodic, run_steps
from mae_jax.core.pixels import PixelNormalization
from mae_jax.core.state import create_state, mesh_context, state_specs
from mae_jax.core.train_step import StepProgram, Task, build_step_program
from mae_jax.evaluate.erasing import erase
from mae_jax.evaluate.layer_decay import finetune_adamw
from mae_jax.evaluate.mixup import mix_batch, soft_cross_entropy
from mae_jax.evaluate.models import ViTClassifier, evaluation_encoder
from mae_jax.evaluators import accuracy
from mae_jax.jobs import eval_common as job_lib

# Random erasing's noise: a key beside (not split from) the mixing and drop
# path keys, so turning erasing on or off leaves their draws unchanged.
_ERASE_STREAM = 0xE7A5E


def finetune_task(model: ViTClassifier, pixels: PixelNormalization, config) -> Task:
  """Cross-entropy on mixed labels; mixing and drop path draw from the
  engine's step key, so a resumed run repeats them exactly.

  With `config.grad_accum_steps` = k > 1 the global batch is mixed once, as
  without accumulation (Mixup pairs image i with image N-1-i of the whole
  batch), then split into k micro-batches whose mean loss and gradient make
  the update; micro-batch i draws drop path from fold_in(drop_key, i). With
  k = 1 drop path uses drop_key itself.
  """
  mix = dict(
    num_classes=model.num_classes,
    mixup_alpha=config.mixup,
    cutmix_alpha=config.cutmix,
    switch_prob=config.mixup_switch_prob,
    smoothing=config.label_smoothing,
  )
  accum = config.grad_accum_steps

  def prepare(state, batch, frozen, key):
    mix_key, _ = jax.random.split(key)
    images = pixels(batch["image"])
    if "erase_box" in batch:
      images = erase(jax.random.fold_in(key, _ERASE_STREAM), images, batch["erase_box"])
    return mix_batch(mix_key, images, batch["label"], **mix)

  def loss(params, state, micro, key, index):
    images, targets = micro
    _, drop_key = jax.random.split(key)
    drop_key = drop_key if accum == 1 else jax.random.fold_in(drop_key, index)
    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": drop_key})
    return soft_cross_entropy(logits, targets).mean(), ({}, {})

  return Task(prepare=prepare, loss=loss)


def finetune_program(config, plan, mesh) -> StepProgram:
  """The fine-tuning step of `config` on `mesh` (the job runs it, the AOT
  planner lowers it): the classifier, layer-decayed AdamW, the batch the
  pipeline sends (uint8 images, labels, padding mask, erasing boxes)."""
  opt, schedule = config.optimizer, optim.schedule_of(config.optimizer, plan)
  model = ViTClassifier(
    plan.model,
    num_classes=plan.num_classes,
    feature=config.feature,
    head_init_std=config.head_init_std,
  )
  abstract_params = jax.eval_shape(
    lambda k: create_state(model, optax.identity(), k).params, jax.random.key(0)
  )
  tx = finetune_adamw(
    schedule,
    abstract_params,
    depth=plan.model.depth,
    layer_decay=opt.layer_decay,
    b1=opt.b1,
    b2=opt.b2,
    weight_decay=opt.weight_decay,
  )
  state_shardings, abstract_state = state_specs(model, tx, mesh, plan.rules)
  pixels = PixelNormalization.of(config.data)
  return build_step_program(
    finetune_task(model, pixels, config),
    model=model,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    rules=plan.rules,
    create_state=lambda key: create_state(model, tx, key),
    state_shardings=state_shardings,
    abstract_state=abstract_state,
    batch_fields=labelled_batch_fields(config, plan.model, config.global_batch_size),
    grad_accum_steps=config.grad_accum_steps,
    seed=config.seed,
    pixels=pixels,
  )


def finetune_logits(model: ViTClassifier, pixels: PixelNormalization) -> Callable:
  """logits(state, batch) of the classifier in evaluation mode (no drop path)."""
  return lambda state, batch: model.apply(
    {"params": state.params}, pixels(batch["image"]), train=False
  )


def run_finetune(config, workdir: str, *, train_batches=None) -> dict:
  """Fine-tunes (or resumes) and returns results.json's contents.

  `train_batches` (start step -> this host's numpy batches) replaces the
  training split's pipeline; tests feed signalling streams through it.
  """
  job = job_lib.start_job(config, workdir)
  plan, mesh, is_main, mngr = job.plan, job.mesh, job.is_main, job.mngr
  batch_sharding, replicated = job.batch_sharding, job.replicated
  program = finetune_program(config, plan, mesh)
  state_shardings = program.state_shardings

  with mesh_context(mesh, plan.rules), checkpointing.completing_saves(mngr):
    state, resumed = job.starting_state(program, "fine-tuning")
    if not resumed and plan.init is not None:
      # AdamW's initial state does not depend on the values: swapping in the
      # pretrained encoder keeps it valid.
      trunk = lambda cfg: evaluation_encoder(cfg, final_norm=config.feature == "cls")
      encoder = pretrained.restore_encoder(plan.init, trunk, plan.model, mesh, plan.rules)
      state = state.replace(params={**state.params, "encoder": encoder})

    evaluate = accuracy.accuracy_evaluator(
      finetune_logits(program.model, program.pixels),
      job.eval_batches,
      plan.num_classes,
      in_shardings=(state_shardings, batch_sharding),
      out_sharding=replicated,
    )
    state, final = run_steps(
      plan.loop,
      workdir,
      mngr,
      job.metadata,
      state,
      program.step,
      job.train_batches(train_batches),
      [Periodic(config.eval_every_steps, evaluate, digits=3)],
      is_main=is_main,
    )
  results = job_lib.write_results(workdir, config, plan, final, step=final["step"], is_main=is_main)
  job_lib.print_summary("Fine-tuning", config.feature, results, workdir, is_main)
  return results
