"""Pretraining's evaluators: the reconstruction loss on held-out images, and the picture.

`reconstruction_evaluator` gives params -> {"eval_loss", "eval_baseline_loss"}
over the eval split with fixed masks (a key per eval batch), so eval losses
are comparable across the run; `write_reconstructions` draws
reconstructions.png from the final parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mae_jax import storage
from mae_jax.core import batches as batches_lib
from mae_jax.core import sharding
from mae_jax.core.pixels import PixelNormalization
from mae_jax.data import make_iterator
from mae_jax.model.loss import patch_targets
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.visualize import reconstruction_panels, save_reconstructions


def make_eval_step(model: MaskedAutoencoder, *, seed_key: jax.Array, pixels: PixelNormalization):
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


def held_out_batches(plan):
  """This host's eval-split batches of the micro-batch size (which the
  train step already fits in memory), with the eval transform."""
  inputs = plan.inputs
  return make_iterator(
    inputs.data,
    split=inputs.data.eval_split,
    global_batch_size=plan.micro_batch_size,
    train=False,
    seed=inputs.seed,
  )


def reconstruction_evaluator(plan, program, param_shardings, *, max_batches: int):
  """params -> {"eval_loss", "eval_baseline_loss"} over the eval split (the
  first `max_batches` batches, config.eval_batches; -1 = all), with fixed masks."""
  replicated = sharding.replicated(program.mesh)
  eval_step = jax.jit(
    make_eval_step(program.model, seed_key=program.seed_key, pixels=program.pixels),
    in_shardings=(param_shardings, program.batch_sharding, replicated),
    out_shardings=replicated,
  )

  def evaluate(params) -> dict:
    eval_iter = held_out_batches(plan)
    totals = None
    try:
      for index, local_batch in enumerate(eval_iter):
        if 0 <= max_batches <= index:
          break
        batch = batches_lib.to_global(local_batch, program.batch_sharding)
        sums = eval_step(params, batch, jnp.asarray(index, jnp.int32))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    finally:
      batches_lib.close_iterator(eval_iter)
    totals = jax.device_get(totals)
    removed = max(float(totals["removed_patches"]), 1.0)
    return {
      "eval_loss": float(totals["loss_sum"]) / removed,
      "eval_baseline_loss": float(totals["baseline_sum"]) / removed,
    }

  return evaluate


def write_reconstructions(plan, workdir, program, params, is_main, *, count: int) -> str:
  """reconstructions.png for the first `count` held-out images (config.num_reconstructions)."""
  data = plan.inputs.data
  path = storage.join(workdir, "reconstructions.png")
  if count <= 0:
    return "(disabled: config.num_reconstructions=0)"
  eval_iter = held_out_batches(plan)
  try:
    batch = batches_lib.to_global(next(eval_iter), program.batch_sharding)
  finally:
    batches_lib.close_iterator(eval_iter)
  model, seed_key, pixels = program.model, program.seed_key, program.pixels
  replicated = sharding.replicated(program.mesh)

  @jax.jit
  def predict(params, images):
    images = pixels(images)
    out = model.apply(
      {"params": params},
      images,
      rngs={"masking": jax.random.fold_in(seed_key, 0xFACE)},
      train=False,
    )
    # Replicated outputs: every host holds the full arrays.
    return jax.lax.with_sharding_constraint((images, out.pred, out.mask), replicated)

  images, pred, mask = jax.device_get(predict(params, batch["image"]))
  if is_main:
    panels = reconstruction_panels(
      images[:count],
      pred[:count],
      mask[:count],
      patch_size=plan.model.patch_size,
      norm_pix_loss=plan.model.norm_pix_loss,
      mean=data.mean,
      std=data.std,
    )
    caption = f"held-out images, mask ratio {plan.model.mask_ratio}" + (
      "; norm-pix: drawn with the TRUE patch mean/std" if plan.model.norm_pix_loss else ""
    )
    save_reconstructions(path, panels, caption=caption)
  return path
