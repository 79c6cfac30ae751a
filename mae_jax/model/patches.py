"""Patchify / unpatchify in the reference order.

`(N, H, W, C) -> (N, L, p*p*C)`: patches in row-major order over the grid,
each flattened in (row-in-patch, column-in-patch, channel) order. Images are
channels-last (the JAX convention); the reference's NCHW einsum
`nchpwq->nhwpqc` yields the same vectors.
"""

import einops
import jax


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  height, width = images.shape[1:3]
  if height % patch_size or width % patch_size:
    raise ValueError(
      f"image of {height}x{width} pixels does not divide into {patch_size}x{patch_size} patches."
    )
  return einops.rearrange(images, "n (h p) (w q) c -> n (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: jax.Array, patch_size: int, channels: int, grid=None) -> jax.Array:
  """The inverse of `patchify`; `grid` = (rows, columns), square when not given."""
  if grid is None:
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
      raise ValueError(f"{patches.shape[1]} patches do not form a square grid: give the grid.")
    grid = (side, side)
  return einops.rearrange(
    patches,
    "n (h w) (p q c) -> n (h p) (w q) c",
    h=grid[0],
    w=grid[1],
    p=patch_size,
    q=patch_size,
    c=channels,
  )
