"""The networks evaluation trains: a linear-probe head and a ViT classifier.

`ViTClassifier` is the reference's fine-tuning ViT (models_vit.py). Its
encoder sub-module (`EncoderTrunk`) builds the same parameter names as the
pretraining `mae_jax.model.mae.Encoder` (`patch_embed`, `cls_token`,
`blocks`, `norm`), so pretrained encoder parameters load unchanged. It
exists because fine-tuning with global pooling needs the tokens *before*
the encoder's final norm (the reference drops that norm and normalises the
pooled feature with `fc_norm` instead); `Encoder` always applies it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import TOKEN_INIT_STD, Encoder
from mae_jax.model.patches import patchify
from mae_jax.model.pos_embed import sincos_2d
from mae_jax.model.vit import (BATCH_LENGTH_EMBED, TransformerStack, dense, layer_norm,
                               normal_init)

def reference_trunc_normal(stddev: float):
  """torch's trunc_normal_(std=s) cuts at +-2 in absolute value, i.e. +-2/s
  standard deviations: for s = 0.01 or 2e-5 a plain normal in practice."""
  return jax.nn.initializers.truncated_normal(stddev, lower=-2.0 / stddev, upper=2.0 / stddev)


def _dtypes(config: ModelConfig) -> dict:
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class EncoderTrunk(nn.Module):
  """The MAE encoder on all patches, optionally without its final norm.

  With `final_norm=True` it computes exactly `Encoder(config)(images)`.
  """

  config: ModelConfig
  final_norm: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    kw = _dtypes(cfg)
    x = dense(cfg.width, ("patch", "embed"), name="patch_embed", **kw)(
        patchify(images.astype(kw["dtype"]), cfg.patch_size))
    x = x + jnp.asarray(sincos_2d(cfg.width, cfg.grid_size), kw["dtype"])[None, 1:]
    cls_token = self.param("cls_token", normal_init(TOKEN_INIT_STD, (None, None, "embed")),
                           (1, 1, cfg.width), kw["param_dtype"])
    x = jnp.concatenate(
        [jnp.broadcast_to(cls_token.astype(x.dtype), (x.shape[0], 1, cfg.width)), x], axis=1)
    x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
    x = TransformerStack(
        depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=cfg.drop_path_rate, deterministic=not train,
        remat_policy=cfg.remat_policy, scan=cfg.scan_layers,
        attention_impl=cfg.attention_impl, name="blocks", **kw)(x)
    return layer_norm(name="norm", **kw)(x) if self.final_norm else x


class ViTClassifier(nn.Module):
  """ViT + head. feature "pool": mean of the patch tokens -> fc_norm -> head
  (the reference fine-tuning default); "cls": final norm -> cls token -> head."""

  config: ModelConfig
  num_classes: int
  feature: str = "pool"
  head_init_std: float = 2e-5

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    kw = _dtypes(self.config)
    pool = self.feature == "pool"
    tokens = EncoderTrunk(self.config, final_norm=not pool, name="encoder")(images, train=train)
    if pool:
      x = layer_norm(name="fc_norm", **kw)(tokens[:, 1:].mean(axis=1))
    else:
      x = tokens[:, 0]
    return nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=kw["param_dtype"],
                    kernel_init=nn.with_logical_partitioning(
                        reference_trunc_normal(self.head_init_std), ("embed", None)),
                    name="head")(x)


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
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-6,
                     use_bias=False, use_scale=False, name="bn")(features.astype(jnp.float32))
    return nn.Dense(self.num_classes, kernel_init=reference_trunc_normal(self.init_std),
                    name="linear")(x)


def frozen_features(config: ModelConfig, feature: str):
  """features(encoder_params, images) -> (N, D) of the frozen MAE encoder:
  the cls token after the final norm, or the mean of the patch tokens
  after it ("pool"); feature "pixels" is the flattened image itself (the
  raw-pixel baseline), which ignores the parameters."""
  if feature == "pixels":
    return lambda params, images: images.reshape(images.shape[0], -1).astype(jnp.float32)
  encoder = Encoder(config)

  def features(params, images):
    tokens = encoder.apply({"params": params}, images, None, train=False)
    return tokens[:, 0] if feature == "cls" else tokens[:, 1:].mean(axis=1)

  return features
