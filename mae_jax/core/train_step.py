"""The jitted pretraining and evaluation steps.

Randomness is a pure function of (seed, step): the masking noise of step s
is drawn for the whole *global* batch from `fold_in(seed_key, s)`, one row
per image. So a resumed run draws exactly the masks an uninterrupted run
would; with JAX's partitionable threefry each device generates only its own
rows, yet the masks do not depend on the mesh (deliberately unlike folding
in the device index, which would tie the result to the device count); and
gradient accumulation slices the same noise as the large batch would use,
so k micro-batches give the update of one full batch.

`build_train_step` is the one place the jitted, sharded, state-donating
train step is made: pretraining runs it, `mae_jax.aot` lowers it for pod
topologies and the benchmarks time it (tests/test_architecture.py checks
that the three lower to the same program).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mae_jax.core import optim, sharding
from mae_jax.core.accumulate import accumulate
from mae_jax.core.nonfinite import guarded_update
from mae_jax.core.pixels import PixelNormalization
from mae_jax.core.state import TrainState, create_state, mesh_context, state_specs, with_shardings
from mae_jax.model.config import ModelConfig
from mae_jax.model.loss import patch_targets
from mae_jax.model.mae import MaskedAutoencoder


def masking_key(seed_key: jax.Array, step: jax.Array) -> jax.Array:
  return jax.random.fold_in(seed_key, step)


def make_train_step(
  model: MaskedAutoencoder,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  *,
  grad_accum_steps: int,
  seed_key: jax.Array,
  pixels: PixelNormalization,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """Returns train_step(state, batch) -> (state, metrics).

  batch["image"] is uint8 from the input pipeline; `pixels` normalises it
  first, inside the step.

  With gradient accumulation the global batch (and its noise) is split into
  `grad_accum_steps` micro-batches (`mae_jax.core.accumulate`), scanned;
  gradients are averaged, which equals the reference's loss / accum_iter
  and, since every micro-batch removes the same number of patches, the
  full-batch gradient.
  """

  def loss_fn(params, images, noise):
    return model.apply({"params": params}, images, noise, train=True).loss

  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    images = pixels(batch["image"])
    noise = jax.random.uniform(
      masking_key(seed_key, state.step), (images.shape[0], model.config.num_patches)
    )
    loss, grads = accumulate(
      lambda params, micro, _: grad_fn(params, *micro),
      state.params,
      (images, noise),
      grad_accum_steps,
    )

    def apply_update(params, opt_state):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A non-finite loss or gradient never reaches the parameters: the step
    # keeps the old state (the loop then stops or counts, per config).
    (params, opt_state), grad_norm, nonfinite = guarded_update(
      loss, grads, apply_update, state.params, state.opt_state
    )
    metrics = {
      "loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(params),
      "nonfinite": nonfinite,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(
  model: MaskedAutoencoder, *, seed_key: jax.Array, pixels: PixelNormalization
) -> Callable:
  """eval_step(params, batch, index) -> summed losses and counts.

  Masks come from a fixed key per eval batch, so eval losses are comparable
  across the run. Returns sums (not means) so padded examples (mask 0) and
  batches of any size combine exactly. `baseline_loss` is the loss of
  predicting zeros, i.e. the per-patch mean under norm-pix: the trivial
  predictor (about 1.0 with norm-pix).
  """
  eval_key = jax.random.fold_in(seed_key, 0x5EED)

  def eval_step(params, batch: dict, index: jax.Array) -> dict:
    images, valid = pixels(batch["image"]), batch["mask"].astype(jnp.float32)
    out = model.apply(
      {"params": params}, images, rngs={"masking": jax.random.fold_in(eval_key, index)}, train=False
    )
    target = patch_targets(images, model.config.patch_size, model.config.norm_pix_loss)
    removed = out.mask * valid[:, None]
    per_patch = jnp.mean((out.pred.astype(jnp.float32) - target) ** 2, axis=-1)
    baseline = jnp.mean(target**2, axis=-1)
    return {
      "loss_sum": jnp.sum(per_patch * removed),
      "baseline_sum": jnp.sum(baseline * removed),
      "removed_patches": jnp.sum(removed),
    }

  return eval_step


@dataclasses.dataclass(frozen=True)
class TrainStepProgram:
  """The jitted pretraining step on a mesh, and what calling or lowering it needs.

  `step(state, batch) -> (state, metrics)` donates the state. The abstract
  arguments carry shape, dtype and sharding, so `lower()` allocates nothing
  (the AOT planner lowers for devices it cannot hold data on).
  """

  step: Any  # jax.jit-wrapped train_step
  model: MaskedAutoencoder
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  abstract_state: TrainState
  abstract_batch: dict
  init_key: jax.Array
  seed_key: jax.Array
  pixels: PixelNormalization

  def lower(self):
    with mesh_context(self.mesh, self.rules):
      return self.step.lower(self.abstract_state, self.abstract_batch)

  def initial_state(self) -> TrainState:
    """A fresh state from `init_key`, created directly in its shardings."""
    with mesh_context(self.mesh, self.rules):
      init = jax.jit(
        lambda key: create_state(self.model, self.tx, key), out_shardings=self.state_shardings
      )
      return init(self.init_key)


def build_train_step(
  model_config: ModelConfig,
  schedule: optax.Schedule,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  rules,
  *,
  global_batch_size: int,
  grad_accum_steps: int,
  seed: int,
  pixels: PixelNormalization,
  donate: bool = True,
) -> TrainStepProgram:
  model = MaskedAutoencoder(model_config)
  # Made outside the mesh context: under it, jax would place the keys on the
  # mesh's devices, which for the AOT planner are compile-only.
  init_key, seed_key = jax.random.split(jax.random.key(seed))
  state_shardings, abstract_state = state_specs(model, tx, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  cfg = model_config
  image = (global_batch_size, cfg.image_size, cfg.image_size, cfg.channels)
  # uint8 pixels, as the pipeline sends them; "mask" (1 for a real example)
  # travels with every batch; training ignores it.
  abstract_batch = {
    "image": jax.ShapeDtypeStruct(image, jnp.uint8, sharding=batch_sharding),
    "mask": jax.ShapeDtypeStruct(image[:1], jnp.float32, sharding=batch_sharding),
  }
  with mesh_context(mesh, rules):
    step = jax.jit(
      make_train_step(
        model,
        tx,
        schedule,
        grad_accum_steps=grad_accum_steps,
        seed_key=seed_key,
        pixels=pixels,
      ),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=(0,) if donate else (),
    )
  return TrainStepProgram(
    step=step,
    model=model,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    rules=tuple(rules),
    state_shardings=state_shardings,
    batch_sharding=batch_sharding,
    abstract_state=with_shardings(abstract_state, state_shardings),
    abstract_batch=abstract_batch,
    init_key=init_key,
    seed_key=seed_key,
    pixels=pixels,
  )


def train_step_from_config(config, plan, mesh: jax.sharding.Mesh) -> TrainStepProgram:
  """The step of a pretraining config and its plan (`mae_jax.core.plan`)."""
  schedule, tx = optim.from_config(
    config, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps
  )
  return build_train_step(
    plan.model,
    schedule,
    tx,
    mesh,
    plan.rules,
    global_batch_size=config.global_batch_size,
    grad_accum_steps=config.grad_accum_steps,
    seed=config.seed,
    pixels=PixelNormalization.of(config.data),
  )
