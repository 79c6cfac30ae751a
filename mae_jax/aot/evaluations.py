"""The programs a run compiles besides its train step, lowered for the plan.

A run whose train step fits can still run out of memory at its first
evaluation: these are the programs its evaluators jit (`mae_jax.evaluators`),
built from the same functions, with abstract (shape, dtype, sharding)
arguments:

- pretraining: the reconstruction eval step (a micro-batch), and with the
  k-NN monitor on, its feature step and the vote of a query chunk against
  the feature bank (the bank sits on one device, as `knn_classify` puts it);
- the probe and fine-tuning: the accuracy pass (an eval batch);
- k-NN: its feature step and the vote (its only programs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mae_jax.core import batches as batches_lib
from mae_jax.core import sharding
from mae_jax.core.train_step import abstract_batch
from mae_jax.evaluators import accuracy, knn, reconstruction

# knn_classify's query chunk.
KNN_QUERY_CHUNK = 1024


@dataclasses.dataclass
class EvalProgram:
  name: str
  lowered: Any  # jax.stages.Lowered
  where: str  # which devices run it


def _images(plan, batch: int) -> tuple:
  cfg = plan.model
  return (batch, *cfg.image_hw, cfg.channels)


def _labelled_batch(plan, batch: int, batch_sharding) -> dict:
  fields = {
    "image": (_images(plan, batch), jnp.uint8),
    "label": ((batch,), jnp.int32),
    "mask": ((batch,), jnp.float32),
  }
  return abstract_batch(fields, batch_sharding)


def knn_programs(plan, mesh, features_fn, params, batch_size: int, bank_size: int) -> list:
  """The k-NN evaluator's feature step and its vote against a bank of
  `bank_size` features on one device."""
  batch_sharding = sharding.batch_sharding(mesh, plan.rules)
  step = batches_lib.feature_step(features_fn, mesh)
  features = step.lower(params, _labelled_batch(plan, batch_size, batch_sharding))
  width = features.out_info[0].shape[-1]
  one_device = jax.sharding.SingleDeviceSharding(mesh.devices.flat[0])
  vote = knn.knn_scores_jit.lower(
    jax.ShapeDtypeStruct((bank_size, width), jnp.float32, sharding=one_device),
    jax.ShapeDtypeStruct((bank_size,), jnp.int32, sharding=one_device),
    jax.ShapeDtypeStruct((KNN_QUERY_CHUNK, width), jnp.float32, sharding=one_device),
    num_classes=plan.num_classes,
    k=plan.knn.k,
    temperature=plan.knn.temperature,
  )
  return [
    EvalProgram(f"k-NN features ({batch_size} images)", features, "all"),
    EvalProgram(
      f"k-NN vote ({KNN_QUERY_CHUNK} queries x {bank_size:,} bank features)", vote, "one device"
    ),
  ]


def bank_size(plan, batch_size: int) -> int:
  """Features the k-NN bank holds: the train split, or its first
  knn_train_batches batches."""
  if plan.knn.train_batches < 0:
    return plan.num_train_examples
  return min(plan.num_train_examples, plan.knn.train_batches * batch_size)


def pretraining(config, plan, mesh, program) -> list[EvalProgram]:
  replicated = sharding.replicated(mesh)
  params_sharding = program.state_shardings.params
  eval_step = jax.jit(
    reconstruction.make_eval_step(program.model, seed_key=program.seed_key, pixels=program.pixels),
    in_shardings=(params_sharding, program.batch_sharding, replicated),
    out_shardings=replicated,
  )
  batch = plan.micro_batch_size
  fields = {"image": (_images(plan, batch), jnp.uint8), "mask": ((batch,), jnp.float32)}
  lowered = eval_step.lower(
    program.abstract_state.params,
    abstract_batch(fields, program.batch_sharding),
    jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
  )
  found = [EvalProgram(f"reconstruction eval ({batch} images)", lowered, "all")]
  if config.knn_every_steps > 0 and plan.num_classes:
    encoder = program.abstract_state.params["encoder"]
    found += knn_programs(
      plan, mesh, knn.monitor_features(plan), encoder, batch, bank_size(plan, batch)
    )
  return found


def accuracy_pass(config, plan, mesh, program, logits_fn, frozen: tuple = ()) -> list:
  batch_sharding = sharding.batch_sharding(mesh, plan.rules)
  sums = jax.jit(
    lambda state, batch, *inputs: accuracy.accuracy_sums(
      logits_fn(state, batch, *inputs), batch["label"], batch["mask"]
    ),
    out_shardings=sharding.replicated(mesh),
  )
  batch = plan.eval_batch_size
  lowered = sums.lower(
    program.abstract_state, _labelled_batch(plan, batch, batch_sharding), *frozen
  )
  return [EvalProgram(f"accuracy eval ({batch} images)", lowered, "all")]


def finetuning(config, plan, mesh, program) -> list[EvalProgram]:
  from mae_jax.jobs.finetune import finetune_logits

  return accuracy_pass(config, plan, mesh, program, finetune_logits(program.model, program.pixels))


def probe(config, plan, mesh, program) -> list[EvalProgram]:
  from mae_jax.evaluate.encoders import abstract_encoder, features_of
  from mae_jax.jobs.linprobe import probe_logits

  if config.cache_features:
    # The features are extracted once, then the head trains on them.
    batch = plan.eval_batch_size
    step = batches_lib.feature_step(features_of(config, plan), mesh)
    lowered = step.lower(
      abstract_encoder(config, plan, mesh),
      _labelled_batch(plan, batch, sharding.batch_sharding(mesh, plan.rules)),
    )
    return [EvalProgram(f"feature extraction ({batch} images)", lowered, "all")]
  logits = probe_logits(program.model, features_of(config, plan))
  return accuracy_pass(config, plan, mesh, program, logits, program.abstract_frozen)


def knn_job(config, plan, mesh) -> list[EvalProgram]:
  from mae_jax.evaluate.encoders import abstract_encoder, features_of

  batch = plan.eval_batch_size
  return knn_programs(
    plan,
    mesh,
    features_of(config, plan),
    abstract_encoder(config, plan, mesh),
    batch,
    bank_size(plan, batch),
  )


BY_JOB = {"pretrain": pretraining, "finetune": finetuning, "linprobe": probe}
