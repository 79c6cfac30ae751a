"""The linear probe: `run_linear_probe(config, workdir)` (config.job = "linprobe").

Reference recipe (main_linprobe.py): the pretrained encoder is frozen; the
feature (cls token after the final norm, or the mean of the patch tokens)
goes through BatchNorm without affine (eps 1e-6) and a Linear initialised
with std 0.01, trained by LARS (momentum 0.9, trust 0.001, no decay) at
lr = base_lr * batch / 256 with warm-up then cosine.

The encoder's parameters are an input of the step, not part of the train
state: nothing differentiates them and no optimizer state exists for them,
so a step costs about one forward pass. With `config.cache_features` (only
when the train transform is deterministic) the features are computed once
and the probe trains on them directly.

Outputs, like pretraining: checkpoints of the head (the encoder stays
where `init_from` points; its path and step are in the metadata),
metrics.jsonl, TensorBoard, config.json, run_info.json, and results.json.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from absl import logging

from mae_jax.core import batches as batches_lib
from mae_jax.core import checkpointing, optim, sharding
from mae_jax.core.batches import labelled_batch_fields
from mae_jax.core.loop import Periodic, run_steps
from mae_jax.core.state import mesh_context
from mae_jax.core.train_step import StepProgram, Task, build_step_program
from mae_jax.evaluate.encoders import abstract_encoder, feature_source, features_of, frozen_encoder
from mae_jax.evaluate.lars import lars
from mae_jax.evaluate.models import ProbeHead
from mae_jax.evaluators import accuracy
from mae_jax.jobs import eval_common as job_lib


@flax.struct.dataclass
class ProbeState:
  step: jax.Array
  params: Any  # the head's Linear (BatchNorm has no affine parameters)
  batch_stats: Any  # BatchNorm running mean / var
  opt_state: optax.OptState

  def to_checkpoint(self) -> dict:
    return {
      "step": self.step,
      "params": {"head": self.params},
      "batch_stats": self.batch_stats,
      "opt_state": self.opt_state,
    }

  @classmethod
  def from_checkpoint(cls, tree: dict) -> "ProbeState":
    return cls(
      step=jnp.asarray(tree["step"]),
      params=tree["params"]["head"],
      batch_stats=tree["batch_stats"],
      opt_state=tree["opt_state"],
    )


def create_probe_state(head: ProbeHead, tx, key, feature_dim: int) -> ProbeState:
  variables = head.init(key, jnp.zeros((1, feature_dim), jnp.float32), train=False)
  params = variables["params"]
  return ProbeState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(params),
  )


def batch_features(features_fn: Callable | None, batch: dict, frozen: tuple) -> jax.Array:
  """The frozen encoder's features of batch["image"] (frozen = (encoder
  params,), or () for raw pixels), or the cached batch["features"]."""
  if features_fn is None:
    return batch["features"]
  return features_fn(frozen[0] if frozen else None, batch["image"])


def probe_task(head: ProbeHead, features_fn: Callable | None) -> Task:
  """Cross-entropy of the head on frozen features. The features are
  computed in `prepare`, outside the differentiated function, so the
  encoder gets no gradient; `features_fn=None` reads batch["features"]
  (cached features). BatchNorm's running statistics are a state field the
  loss updates (kept, like the rest, when a step is not finite)."""

  def prepare(state, batch, frozen, key):
    return jax.lax.stop_gradient(batch_features(features_fn, batch, frozen)), batch["label"]

  def loss(params, state, micro, key, index):
    features, labels = micro
    logits, updates = head.apply(
      {"params": params, "batch_stats": state.batch_stats},
      features,
      train=True,
      mutable=["batch_stats"],
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    top1 = 100.0 * jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, ({"train_top1": top1}, {"batch_stats": updates["batch_stats"]})

  return Task(prepare=prepare, loss=loss)


def probe_program(config, plan, mesh, *, cached: bool | None = None) -> StepProgram:
  """The probe's step on `mesh` (the job runs it, the AOT planner lowers
  it): LARS on the head, the frozen encoder an undonated input (none for
  raw pixels or cached features), the state replicated. `cached`: the
  batches carry features (default: config.cache_features)."""
  cached = config.cache_features if cached is None else cached
  opt, schedule = config.optimizer, optim.schedule_of(config.optimizer, plan)
  tx = lars(
    schedule,
    momentum=opt.momentum,
    trust_coefficient=opt.trust_coefficient,
    weight_decay=opt.weight_decay,
  )
  head = ProbeHead(plan.num_classes, init_std=config.head_init_std)
  features_fn = features_of(config, plan)
  encoder = abstract_encoder(config, plan, mesh)
  cfg = plan.model
  image = jax.ShapeDtypeStruct((1, *cfg.image_hw, cfg.channels), jnp.uint8)
  feature = jax.eval_shape(features_fn, encoder, image)
  create = lambda key: create_probe_state(head, tx, key, feature.shape[-1])
  abstract_state = jax.eval_shape(create, jax.random.key(0))
  replicated = sharding.replicated(mesh)
  batch = config.global_batch_size
  if cached:
    fields = {
      "features": ((batch, feature.shape[-1]), feature.dtype),
      "label": ((batch,), jnp.int32),
    }
  else:
    fields = labelled_batch_fields(config, cfg, batch)
  return build_step_program(
    probe_task(head, None if cached else features_fn),
    model=head,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    rules=plan.rules,
    create_state=create,
    state_shardings=jax.tree.map(lambda _: replicated, abstract_state),
    abstract_state=abstract_state,
    batch_fields=fields,
    frozen=() if cached or encoder is None else (encoder,),
    grad_accum_steps=config.grad_accum_steps,
    seed=config.seed,
  )


def probe_logits(head: ProbeHead, features_fn: Callable | None) -> Callable:
  """logits(state, batch, *frozen) of the head (BatchNorm's running
  statistics) on frozen features, or on batch["features"] (`features_fn=None`)."""

  def logits(state: ProbeState, batch: dict, *frozen) -> jax.Array:
    return head.apply(
      {"params": state.params, "batch_stats": state.batch_stats},
      batch_features(features_fn, batch, frozen),
      train=False,
    )

  return logits


def run_linear_probe(config, workdir: str, *, train_batches=None) -> dict:
  """Trains the probe (or resumes it) and returns results.json's contents.

  `train_batches` (start step -> this host's numpy batches) replaces the
  training split's pipeline; tests feed damaged streams through it.
  """
  job = job_lib.start_job(config, workdir)
  plan, mesh, is_main, mngr = job.plan, job.mesh, job.is_main, job.mngr
  batch_sharding, replicated = job.batch_sharding, job.replicated
  # The program's init key (the head) is the first half of the seed's split.
  _, encoder_key = jax.random.split(jax.random.key(config.seed))
  cached = bool(config.cache_features and train_batches is None)
  program = probe_program(config, plan, mesh, cached=cached)

  with mesh_context(mesh, plan.rules), checkpointing.completing_saves(mngr):
    features_fn, encoder_params = frozen_encoder(config, plan, mesh, encoder_key)
    state, _ = job.starting_state(program, "the probe")

    if cached:
      logging.info(
        "Caching features of %s and %s.", config.data.train_split, config.data.eval_split
      )
      features_cache = {}
      for name, split in (("train", config.data.train_split), ("eval", config.data.eval_split)):
        features, labels = batches_lib.extract_features(
          features_fn,
          encoder_params,
          job.split_batches(split),
          mesh,
        )
        features_cache[name] = {"features": features, "label": labels}
      global_batches = lambda start: batches_lib.epoch_batches(
        features_cache["train"],
        config.global_batch_size,
        batch_sharding,
        seed=config.seed,
        start_step=start,
      )
      eval_batches = lambda: batches_lib.array_batches(
        features_cache["eval"], plan.eval_batch_size, batch_sharding
      )
      step_features = None
    else:
      global_batches = job.train_batches(train_batches)
      eval_batches = job.eval_batches
      step_features = features_fn

    frozen = () if cached or encoder_params is None else (encoder_params,)
    evaluate = accuracy.accuracy_evaluator(
      probe_logits(program.model, step_features),
      eval_batches,
      plan.num_classes,
      out_sharding=replicated,
      frozen=frozen,
    )
    state, final = run_steps(
      plan.loop,
      workdir,
      mngr,
      job.metadata,
      state,
      program.bind(*frozen),
      global_batches,
      [Periodic(config.eval_every_steps, evaluate, digits=3)],
      is_main=is_main,
    )
  results = job_lib.write_results(workdir, config, plan, final, step=final["step"], is_main=is_main)
  job_lib.print_summary("Linear probe", feature_source(config), results, workdir, is_main)
  return results
