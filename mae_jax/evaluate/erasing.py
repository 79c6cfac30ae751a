"""Random erasing's noise, on the device (fine-tuning's train step).

The host draws each example's rectangle with the reference's draws
(`mae_jax.data.randaugment.random_erasing_box`) and ships it with the uint8
image; here the normalised image gets N(0, 1) noise per pixel inside it,
as timm's RandomErasing(mode="pixel"). The noise is drawn for the whole
global batch from the step's key, so it does not depend on the mesh and a
resumed run draws the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def erase(key: jax.Array, images: jax.Array, boxes: jax.Array) -> jax.Array:
  """images [B, H, W, C] (normalised), boxes int32 [B, 4] = (top, left,
  height, width), all zeros for "not erased" -> erased images."""
  _, height, width, _ = images.shape
  top, left, box_height, box_width = (boxes[:, i, None] for i in range(4))
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= top) & (rows < top + box_height)  # [B, H]
  in_cols = (cols >= left) & (cols < left + box_width)  # [B, W]
  inside = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  noise = jax.random.normal(key, images.shape, images.dtype)
  return jnp.where(inside, noise, images)
