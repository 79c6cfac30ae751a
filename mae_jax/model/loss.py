"""The MAE objective: pixel MSE on removed patches, optionally norm-pix."""

import jax
import jax.numpy as jnp

from mae_jax.model.patches import patchify

NORM_PIX_EPS = 1e-6


def patch_targets(images: jax.Array, patch_size: int, norm_pix_loss: bool) -> jax.Array:
  """(N, H, W, C) -> (N, L, p*p*C) targets, in float32.

  With norm-pix each patch is standardised by its own mean and *unbiased*
  (ddof=1) variance, as the reference does with torch's `Tensor.var`.
  """
  target = patchify(images.astype(jnp.float32), patch_size)
  if norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
  return target


def reconstruction_loss(
  images: jax.Array, pred: jax.Array, mask: jax.Array, *, patch_size: int, norm_pix_loss: bool
) -> jax.Array:
  """Mean over removed patches of the per-patch mean squared error.

  Args:
    images: (N, H, W, C) input images.
    pred: (N, L, p*p*C) decoder predictions.
    mask: (N, L), 1 = removed (counts), 0 = visible (ignored).
  """
  target = patch_targets(images, patch_size, norm_pix_loss)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  mask = mask.astype(jnp.float32)
  # The reference divides by mask.sum() directly; the max() only matters
  # for mask_ratio == 0 (nothing removed), where it returns 0 instead of NaN.
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
