"""The networks evaluation trains: a linear-probe head and a ViT classifier.

`ViTClassifier` is the reference's fine-tuning ViT (models_vit.py): the
pretraining `mae_jax.model.mae.Encoder` on all patches (so pretrained
encoder parameters load unchanged) plus a head. With global pooling the
encoder's final norm is left out (`final_norm=False`) and the pooled feature
is normalised by `fc_norm` instead, as in the reference. The position
table is a parameter (`pos_embed`, cls row included), set from the
checkpoint's table resized to this resolution, and fine-tuned.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import Encoder, dtypes
from mae_jax.model.vit import layer_norm


def reference_trunc_normal(stddev: float):
  """torch's trunc_normal_(std=s) cuts at +-2 in absolute value, i.e. +-2/s
  standard deviations: for s = 0.01 or 2e-5 a plain normal in practice."""
  return jax.nn.initializers.truncated_normal(stddev, lower=-2.0 / stddev, upper=2.0 / stddev)


def evaluation_encoder(config: ModelConfig, *, final_norm: bool = True, name=None) -> Encoder:
  """The encoder of every evaluation job: learned position table (models_vit.py)."""
  return Encoder(config, final_norm=final_norm, learned_pos_embed=True, name=name)


class ViTClassifier(nn.Module):
  """ViT + head. feature "pool": mean of the patch tokens -> fc_norm -> head
  (the reference fine-tuning default); "cls": final norm -> cls token -> head."""

  config: ModelConfig
  num_classes: int
  feature: str = "pool"
  head_init_std: float = 2e-5

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    kw = dtypes(self.config)
    pool = self.feature == "pool"
    encoder = evaluation_encoder(self.config, final_norm=not pool, name="encoder")
    tokens = encoder(images, train=train)
    if pool:
      x = layer_norm(name="fc_norm", **kw)(tokens[:, 1:].mean(axis=1))
    else:
      x = tokens[:, 0]
    return nn.Dense(
      self.num_classes,
      dtype=jnp.float32,
      param_dtype=kw["param_dtype"],
      kernel_init=nn.with_logical_partitioning(
        reference_trunc_normal(self.head_init_std), ("embed", None)
      ),
      name="head",
    )(x)


class ProbeHead(nn.Module):
  """The linear probe: BatchNorm without affine (eps 1e-6) then Linear.

  Batch statistics while training, running statistics at evaluation
  (torch momentum 0.1 = flax momentum 0.9). Under a mesh the batch
  statistics are over the global batch (the reference: per GPU).
  """

  num_classes: int
  init_std: float = 0.01

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-6,
      use_bias=False,
      use_scale=False,
      name="bn",
    )(features.astype(jnp.float32))
    return nn.Dense(
      self.num_classes, kernel_init=reference_trunc_normal(self.init_std), name="linear"
    )(x)
