"""The frozen encoder of the probe and k-NN jobs: restored, random, or none.

config.baseline ""            the checkpoint `init_from` names (plan.init)
                "random_init" the same architecture at its initialisation
                "raw_pixels"  no encoder: the flattened image is the feature
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from mae_jax.core import pretrained
from mae_jax.core.pixels import PixelNormalization, on_pixels
from mae_jax.core.state import with_shardings
from mae_jax.evaluate.models import evaluation_encoder
from mae_jax.model.features import frozen_features


def features_of(config, plan) -> Callable:
  """features_fn(encoder params, the pipeline's uint8 images) -> (N, D) for
  the configured feature source (the params are ignored for raw pixels)."""
  pixels = PixelNormalization.of(config.data)
  if config.baseline == "raw_pixels":
    return on_pixels(frozen_features(plan.model, "pixels"), pixels)
  # The reference's evaluation ViT: its position table is a (frozen)
  # parameter, the checkpoint's table resized to this resolution.
  return on_pixels(frozen_features(plan.model, config.feature, learned_pos_embed=True), pixels)


def abstract_encoder(config, plan, mesh) -> Any:
  """The frozen encoder's parameters as abstract arrays with their
  shardings (what `frozen_encoder` returns, unallocated); None for raw pixels."""
  if config.baseline == "raw_pixels":
    return None
  shardings, abstract = pretrained.param_specs(evaluation_encoder(plan.model), mesh, plan.rules)
  return with_shardings(abstract, shardings)


def frozen_encoder(config, plan, mesh, key: jax.Array) -> tuple[Callable, Any]:
  """(features_fn(params, images) -> (N, D), params) for the configured
  feature source; features_fn takes the pipeline's uint8 images."""
  features_fn = features_of(config, plan)
  if config.baseline == "raw_pixels":
    return features_fn, None
  if config.baseline == "random_init":
    encoder = evaluation_encoder(plan.model)
    shardings, _ = pretrained.param_specs(encoder, mesh, plan.rules)
    return features_fn, pretrained.random_params(encoder, key, shardings)
  return features_fn, pretrained.restore_encoder(
    plan.init, evaluation_encoder, plan.model, mesh, plan.rules
  )


def feature_source(config) -> str:
  return "pixels" if config.baseline == "raw_pixels" else config.feature
