"""The step engine: one builder turns a job's loss into its jitted train step.

A job (pretraining, the linear probe, fine-tuning) describes only what it
differentiates, as a `Task`:

  prepare(state, batch, frozen, step_key) -> inputs
      the whole global batch made ready for the loss: pixels normalised,
      masking noise drawn, Mixup applied, frozen features computed. Runs
      once per step, outside the differentiated function.
  loss(params, state, micro_inputs, step_key, index) -> (loss, (metrics, updates))
      the mean loss of one micro-batch (`index` counts micro-batches under
      gradient accumulation), extra metrics, and new values of state fields
      other than params and opt_state (BatchNorm statistics), applied with
      the update.

The engine does the rest, the same way for every job: the step key
fold_in(seed_key, step) (so a resumed run draws what an uninterrupted one
would, on any mesh), gradient accumulation (`mae_jax.core.accumulate`),
the optimizer, the non-finite guard (`mae_jax.core.nonfinite`), the common
metrics, and `build_step_program`'s `jax.jit` with the state's and the
batch's shardings and the donated state. Frozen inputs (the probe's encoder)
are extra, undonated arguments: `step(state, batch, *frozen)`.

`build_step_program` is the only place a train step is jitted. The jobs run
it, `mae_jax.aot` lowers it for pod topologies and the benchmarks time it
(tests/test_architecture.py checks the three lower to the same program).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax

from mae_jax.core import sharding
from mae_jax.core.accumulate import accumulate
from mae_jax.core.nonfinite import guarded_update
from mae_jax.core.state import mesh_context, with_shardings

# (params, state, micro_inputs, step_key, index) -> (loss, (metrics, state updates))
LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]


@dataclasses.dataclass(frozen=True)
class Task:
  """What one training job differentiates (see the module docstring)."""

  prepare: Callable[[Any, dict, tuple, jax.Array], Any]
  loss: LossFn


def step_key(seed_key: jax.Array, step: jax.Array) -> jax.Array:
  """The randomness of step `step`: masks, Mixup, drop path."""
  return jax.random.fold_in(seed_key, step)


def make_train_step(
  task: Task,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  *,
  grad_accum_steps: int,
  seed_key: jax.Array,
) -> Callable:
  """train_step(state, batch, *frozen) -> (state, metrics).

  `state` is any flax struct with `step`, `params` and `opt_state` (and the
  fields a task's loss updates). With `grad_accum_steps` = k the prepared
  inputs are split into k micro-batches and scanned; losses and gradients
  are averaged, the reference's loss / accum_iter.
  """
  grad_fn = jax.value_and_grad(task.loss, has_aux=True)

  def train_step(state, batch: dict, *frozen):
    key = step_key(seed_key, state.step)
    inputs = task.prepare(state, batch, frozen, key)
    (loss, (extra_metrics, updates)), grads = accumulate(
      lambda params, micro, index: grad_fn(params, state, micro, key, index),
      state.params,
      inputs,
      grad_accum_steps,
    )
    fields = sorted(updates)

    def apply_update(params, opt_state, *_old_fields):
      changes, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, changes), opt_state, *(updates[f] for f in fields))

    # A non-finite loss or gradient never reaches the state: the step keeps
    # the old one (the loop then stops or counts, per config).
    (params, opt_state, *new_fields), grad_norm, nonfinite = guarded_update(
      loss, grads, apply_update, state.params, state.opt_state, *(getattr(state, f) for f in fields)
    )
    metrics = {
      "loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(params),
      "nonfinite": nonfinite,
      **extra_metrics,
    }
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, **dict(zip(fields, new_fields))
    )
    return new_state, metrics

  return train_step


@dataclasses.dataclass(frozen=True)
class StepProgram:
  """A job's jitted train step on a mesh, and what calling or lowering it needs.

  `step(state, batch, *frozen) -> (state, metrics)` donates the state. The
  abstract arguments carry shape, dtype and sharding, so `lower()`
  allocates nothing (the AOT planner lowers for devices it cannot hold data
  on). `model`, `pixels` and the keys are what the job's evaluation needs.
  """

  step: Any  # the jax.jit-wrapped train_step
  model: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any
  batch_sharding: jax.sharding.NamedSharding
  abstract_state: Any
  abstract_batch: dict
  abstract_frozen: tuple
  init_key: jax.Array
  seed_key: jax.Array
  create_state: Callable[[jax.Array], Any]
  pixels: Any = None

  def lower(self):
    with mesh_context(self.mesh, self.rules):
      return self.step.lower(self.abstract_state, self.abstract_batch, *self.abstract_frozen)

  def initial_state(self) -> Any:
    """A fresh state from `init_key`, created directly in its shardings."""
    with mesh_context(self.mesh, self.rules):
      init = jax.jit(self.create_state, out_shardings=self.state_shardings)
      return init(self.init_key)

  def bind(self, *frozen) -> Callable:
    """step(state, batch) with the frozen inputs filled in (for the loop)."""
    return lambda state, batch: self.step(state, batch, *frozen)


def abstract_batch(fields: dict[str, tuple[tuple, Any]], batch_sharding) -> dict:
  """{name: (shape, dtype)} -> abstract arrays split like the batch."""
  return {
    name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    for name, (shape, dtype) in fields.items()
  }


def build_step_program(
  task: Task,
  *,
  model: Any,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  mesh: jax.sharding.Mesh,
  rules,
  create_state: Callable[[jax.Array], Any],
  state_shardings: Any,
  abstract_state: Any,
  batch_fields: dict[str, tuple[tuple, Any]],
  frozen: tuple = (),
  grad_accum_steps: int,
  seed: int,
  pixels: Any = None,
  donate: bool = True,
) -> StepProgram:
  """The one `jax.jit` of a train step: `task`'s step with the state's and
  the batch's shardings (frozen inputs keep their own), the state donated.

  `frozen`: abstract arrays (with shardings) of the undonated extra inputs.
  """
  # Made outside the mesh context: under it, jax would place the keys on the
  # mesh's devices, which for the AOT planner are compile-only.
  init_key, seed_key = jax.random.split(jax.random.key(seed))
  batch_sharding = sharding.batch_sharding(mesh, rules)
  frozen_shardings = tuple(jax.tree.map(lambda a: a.sharding, f) for f in frozen)
  with mesh_context(mesh, rules):
    step = jax.jit(
      make_train_step(task, tx, schedule, grad_accum_steps=grad_accum_steps, seed_key=seed_key),
      in_shardings=(state_shardings, batch_sharding, *frozen_shardings),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,) if donate else (),
    )
  return StepProgram(
    step=step,
    model=model,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    rules=tuple(rules),
    state_shardings=state_shardings,
    batch_sharding=batch_sharding,
    abstract_state=with_shardings(abstract_state, state_shardings),
    abstract_batch=abstract_batch(batch_fields, batch_sharding),
    abstract_frozen=tuple(frozen),
    init_key=init_key,
    seed_key=seed_key,
    create_state=create_state,
    pixels=pixels,
  )
