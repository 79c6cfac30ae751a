"""Mixup / CutMix with label smoothing, on the device, per global batch.

As the reference fine-tuning recipe (timm's Mixup in "batch" mode): every
step mixes the batch with its reverse, using CutMix with probability
`switch_prob` (lam ~ Beta(cutmix, cutmix), one box for the whole batch,
lam then corrected to the box's exact area) and otherwise Mixup
(lam ~ Beta(mixup, mixup)). Targets are label-smoothed one-hots (off =
smoothing / classes, on = 1 - smoothing + off) mixed with the same lam, so
every target row sums to 1.

The draws come from a key folded from (seed, step): a resumed run mixes
exactly as the uninterrupted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key: jax.Array, lam: jax.Array, height: int, width: int):
  """(top, bottom, left, right) of a box covering about 1 - lam of the image,
  its centre uniform over the image, clipped to the borders."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (cut * height).astype(jnp.int32), (cut * width).astype(jnp.int32)
  cy_key, cx_key = jax.random.split(key)
  cy = jax.random.randint(cy_key, (), 0, height)
  cx = jax.random.randint(cx_key, (), 0, width)
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return top, bottom, left, right


def mix_batch(
  key: jax.Array,
  images: jax.Array,
  labels: jax.Array,
  *,
  num_classes: int,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float,
  smoothing: float,
) -> tuple[jax.Array, jax.Array]:
  """(images, labels) -> (mixed images, soft targets (N, num_classes))."""
  targets = smooth_one_hot(labels, num_classes, smoothing)
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return images, targets
  switch_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # Symmetric Beta(alpha, alpha); the floor only keeps a disabled branch well defined.
  lam_mixup = jax.random.beta(mixup_key, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cutmix = jax.random.beta(cutmix_key, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  height, width = images.shape[1], images.shape[2]
  top, bottom, left, right = cutmix_box(box_key, lam_cutmix, height, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  box_lam = 1.0 - jnp.sum(in_box) / (height * width)
  flipped = images[::-1]
  cutmixed = jnp.where(in_box[None, :, :, None], flipped, images)
  mixed_up = images * lam_mixup + flipped * (1.0 - lam_mixup)
  images = jnp.where(use_cutmix, cutmixed, mixed_up.astype(images.dtype))
  lam = jnp.where(use_cutmix, box_lam, lam_mixup).astype(targets.dtype)
  return images, targets * lam + targets[::-1] * (1.0 - lam)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example cross-entropy against soft targets, in float32."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
