"""Per-sample random masking by argsort of uniform noise (jit-friendly).

Every image gets its own noise row, hence its own mask. The number of kept
tokens is a Python int, so every shape is static under `jax.jit`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Masking(NamedTuple):
  ids_keep: jax.Array  # (N, len_keep) indices of the visible patches
  ids_restore: jax.Array  # (N, L) inverse permutation of the shuffle
  mask: jax.Array  # (N, L) 0 = visible, 1 = removed (in patch order)


def num_kept(num_patches: int, mask_ratio: float) -> int:
  """int(L * (1 - mask_ratio)), exactly as the reference rounds."""
  return int(num_patches * (1 - mask_ratio))


def random_masking(noise: jax.Array, len_keep: int) -> Masking:
  """Masking from noise of shape (N, L): the smallest noise values are kept.

  `noise` is normally `jax.random.uniform(key, (N, L))`; tests pass the
  same noise to a reference implementation to compare masks exactly.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  ids_keep = ids_shuffle[:, :len_keep]
  # 0 for the first len_keep positions of the shuffled order, then 1,
  # gathered back into patch order.
  shuffled_mask = (jnp.arange(noise.shape[1]) >= len_keep).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, noise.shape), ids_restore, axis=1)
  return Masking(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def gather_tokens(tokens: jax.Array, indices: jax.Array) -> jax.Array:
  """tokens (N, L, D), indices (N, K) -> (N, K, D): per-sample gather."""
  return jnp.take_along_axis(tokens, indices[..., None], axis=1)


def unshuffle(tokens: jax.Array, ids_restore: jax.Array) -> jax.Array:
  """Puts tokens in shuffled order (visible first) back into patch order."""
  return gather_tokens(tokens, ids_restore)
