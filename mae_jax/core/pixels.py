"""uint8 images -> the model's dataset-normalised float32, inside the jitted steps.

The input pipeline ships images as uint8 [B, H, W, C]: a quarter of the
bytes of float32 through Grain's queues, the host-to-device copy and the
device prefetch buffer, and no per-pixel arithmetic on the host's cores,
which decoding already saturates. Every jitted step that reads
batch["image"] maps it through a `PixelNormalization` first, where XLA fuses
the multiply-add into the step's first use of the pixels.

The arithmetic is the one the host did before (two float32 constants per
channel, one multiply then one add), so the normalised values are the same
(tests/test_data.py compares them with the numpy formula).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PixelNormalization:
  """(pixel / 255 - mean) / std per channel, for uint8 images.

  Float images pass through unchanged: they are already normalised (the
  ten-line model example, cached features, tests that build arrays). Frozen
  and hashable, so jitted functions can close over it and caches key on it.
  """

  mean: tuple[float, ...]
  std: tuple[float, ...]

  @classmethod
  def of(cls, data_config: Any) -> "PixelNormalization":
    """The normalisation of `config.data` (its mean and std, per channel)."""
    return cls(tuple(float(m) for m in data_config.mean), tuple(float(s) for s in data_config.std))

  def constants(self) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) in float32: pixel * scale + offset."""
    std = np.asarray(self.std, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-np.asarray(self.mean, np.float32) / std).astype(np.float32)
    return scale, offset

  def __call__(self, images: jax.Array) -> jax.Array:
    if images.dtype != jnp.uint8:
      return images
    scale, offset = self.constants()
    return images.astype(jnp.float32) * scale + offset


def on_pixels(features_fn: Callable, pixels: PixelNormalization) -> Callable:
  """features_fn(params, normalised images) -> the same function of the
  pipeline's uint8 images (frozen features, the raw-pixel baseline)."""
  return lambda params, images: features_fn(params, pixels(images))
