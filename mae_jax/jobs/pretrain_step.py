"""Pretraining's step: the MAE's loss as a task of the step engine.

Randomness is a pure function of (seed, step): the masking noise of step s
is drawn for the whole *global* batch from the engine's step key
fold_in(seed_key, s), one row per image. So a resumed run draws exactly the
masks an uninterrupted run would; with JAX's partitionable threefry each
device generates only its own rows, yet the masks do not depend on the mesh
(deliberately unlike folding in the device index, which would tie the
result to the device count); and gradient accumulation slices the same
noise as the large batch would use, so k micro-batches give the update of
one full batch (every micro-batch removes the same number of patches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mae_jax.core import optim
from mae_jax.core.pixels import PixelNormalization
from mae_jax.core.state import create_state, state_specs
from mae_jax.core.train_step import StepProgram, Task, build_step_program
from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import MaskedAutoencoder


def pretraining_task(model: MaskedAutoencoder, pixels: PixelNormalization) -> Task:
  """batch["image"] is uint8 from the input pipeline, normalised in the step."""

  def prepare(state, batch, frozen, key):
    images = pixels(batch["image"])
    return images, jax.random.uniform(key, (images.shape[0], model.config.num_patches))

  def loss(params, state, micro, key, index):
    images, noise = micro
    return model.apply({"params": params}, images, noise, train=True).loss, ({}, {})

  return Task(prepare=prepare, loss=loss)


def build_pretraining_step(
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
) -> StepProgram:
  model = MaskedAutoencoder(model_config)
  state_shardings, abstract_state = state_specs(model, tx, mesh, rules)
  cfg = model_config
  image = (global_batch_size, *cfg.image_hw, cfg.channels)
  return build_step_program(
    pretraining_task(model, pixels),
    model=model,
    tx=tx,
    schedule=schedule,
    mesh=mesh,
    rules=rules,
    create_state=lambda key: create_state(model, tx, key),
    state_shardings=state_shardings,
    abstract_state=abstract_state,
    # uint8 pixels, as the pipeline sends them; "mask" (1 for a real
    # example) travels with every batch; training ignores it.
    batch_fields={"image": (image, jnp.uint8), "mask": (image[:1], jnp.float32)},
    grad_accum_steps=grad_accum_steps,
    seed=seed,
    pixels=pixels,
    donate=donate,
  )


def pretraining_program(config, plan, mesh: jax.sharding.Mesh) -> StepProgram:
  """The step of a pretraining config and its plan (`mae_jax.core.plan`)."""
  schedule, tx = optim.pretraining_optimizer(config.optimizer, plan)
  return build_pretraining_step(
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
