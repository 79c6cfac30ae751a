"""Features of a frozen MAE encoder, for the k-NN and linear-probe protocols."""

from __future__ import annotations

import jax.numpy as jnp

from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import Encoder


def frozen_features(config: ModelConfig, feature: str, *, learned_pos_embed: bool = False):
  """features(encoder_params, images) -> (N, D) of the frozen MAE encoder:
  the cls token after the final norm, or the mean of the patch tokens
  after it ("pool"); feature "pixels" is the flattened image itself (the
  raw-pixel baseline), which ignores the parameters. `learned_pos_embed`:
  the evaluation encoder, whose position table is a parameter (restored
  from a checkpoint at this resolution; see `Encoder`)."""
  if feature == "pixels":
    return lambda params, images: images.reshape(images.shape[0], -1).astype(jnp.float32)
  encoder = Encoder(config, learned_pos_embed=learned_pos_embed)

  def features(params, images):
    tokens = encoder.apply({"params": params}, images, None, train=False)
    return tokens[:, 0] if feature == "cls" else tokens[:, 1:].mean(axis=1)

  return features
