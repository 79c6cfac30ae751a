"""The masked autoencoder: encoder on visible patches, light decoder.

Order of operations (reference `models_mae.py`):
  encoder: patch embed -> + pos embed (no cls row) -> keep visible patches
           -> prepend cls token -> blocks -> LayerNorm
           (computed as keep visible patches -> embed -> + their pos embed:
           the same tokens, embedding only the visible quarter)
  decoder: Linear to decoder width -> append mask tokens -> unshuffle
           -> + decoder pos embed -> blocks -> LayerNorm -> Linear to p*p*C
           -> drop the cls row
  loss:    per-patch MSE against (norm-pix) targets, removed patches only.

Images are channels-last, (N, H, W, C). Masking noise comes from the
"masking" RNG stream, or is passed in explicitly (tests feed a reference
implementation the same noise).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax.model.config import ModelConfig
from mae_jax.model.loss import reconstruction_loss
from mae_jax.model.masking import Masking, gather_tokens, random_masking, unshuffle
from mae_jax.model.patches import patchify
from mae_jax.model.pos_embed import sincos_2d
from mae_jax.model.vit import BATCH_LENGTH_EMBED, TransformerStack, dense, layer_norm, normal_init

TOKEN_INIT_STD = 0.02


class MAEOutput(NamedTuple):
  loss: jax.Array  # scalar, float32
  pred: jax.Array  # (N, L, p*p*C) predicted (normalised) pixels
  mask: jax.Array  # (N, L) 1 = removed
  ids_restore: jax.Array  # (N, L)


class EncoderFeatures(NamedTuple):
  cls: jax.Array  # (N, D) cls token after the final norm (linear-probe feature)
  pooled: jax.Array  # (N, D) mean of the patch tokens after the final norm
  tokens: jax.Array  # (N, 1 + L, D) every token after the final norm


def dtypes(config: ModelConfig) -> dict:
  """The dtype / param_dtype arguments of every linen layer of a model of `config`."""
  return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def check_images(images: jax.Array, config: ModelConfig) -> None:
  """Static shape check, so a wrong input fails with a readable message."""
  expected = (*config.image_hw, config.channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != expected:
    raise ValueError(
      f"images of shape {tuple(images.shape)} do not fit the model: expected "
      f"(batch, {expected[0]}, {expected[1]}, {expected[2]}) channels-last "
      "(model.image_size, model.channels)."
    )


class Encoder(nn.Module):
  """ViT encoder. With `masking`, it sees only the visible patches.

  `final_norm=False` leaves out the last LayerNorm (and its parameters):
  fine-tuning with global pooling normalises the pooled feature instead, as
  the reference does; the other parameter names are the same, so
  pretrained weights load unchanged.

  `learned_pos_embed=True` is the evaluation ViT's position embedding (the
  reference's models_vit.py, a timm ViT): a parameter `pos_embed` of shape
  (1, 1 + L, D), cls row included and added to the cls token, initialised
  to the sin-cos table. Fine-tuning trains it; restoring a checkpoint sets
  it to the checkpoint's table, resized to this grid
  (`mae_jax.core.pretrained.restore_encoder`). Pretraining keeps the fixed
  table, which is not a parameter.
  """

  config: ModelConfig
  final_norm: bool = True
  learned_pos_embed: bool = False

  @nn.compact
  def __call__(
    self, images: jax.Array, masking: Masking | None = None, *, train: bool = False
  ) -> jax.Array:
    cfg = self.config
    kw = dtypes(cfg)
    patches = patchify(images.astype(kw["dtype"]), cfg.patch_size)
    if self.learned_pos_embed:
      # A "params" variable, not self.param: its initialiser draws no key,
      # so every other parameter initialises exactly as without it.
      table = self.variable(
        "params",
        "pos_embed",
        nn.with_logical_partitioning(
          lambda: jnp.asarray(sincos_2d(cfg.width, cfg.grid_hw)[None], kw["param_dtype"]),
          (None, None, "embed"),
        ),
      ).value.astype(kw["dtype"])
    else:
      table = jnp.asarray(sincos_2d(cfg.width, cfg.grid_hw), kw["dtype"])[None]
    pos = table[:, 1:]
    visible_only = masking is not None and not cfg.encoder_mask_tokens
    if visible_only:
      # Keeping the visible patches before the embedding (not after, as the
      # reference) gives the same tokens for a quarter of the work.
      patches = gather_tokens(patches, masking.ids_keep)
      pos = jnp.take(pos[0], masking.ids_keep, axis=0)  # (N, len_keep, D)
    # The reference's stride-p conv is a Linear over flattened patches.
    x = dense(cfg.width, ("patch", "embed"), name="patch_embed", **kw)(patches)
    x = x + pos
    if masking is not None and cfg.encoder_mask_tokens:
      # The paper's "w/ [M]" ablation: removed patches become a learned
      # token (with its position) and the encoder processes all L tokens.
      enc_mask_token = self.param(
        "mask_token",
        normal_init(TOKEN_INIT_STD, (None, None, "embed")),
        (1, 1, cfg.width),
        kw["param_dtype"],
      )
      x = jnp.where(masking.mask[..., None] > 0, enc_mask_token.astype(x.dtype) + pos, x)
    cls_token = self.param(
      "cls_token",
      normal_init(TOKEN_INIT_STD, (None, None, "embed")),
      (1, 1, cfg.width),
      kw["param_dtype"],
    )
    # The fixed table's cls row is zero, so cls + pos[0] == cls; a learned
    # table's cls row is added, as timm does.
    if self.learned_pos_embed:
      cls_token = cls_token.astype(x.dtype) + table[:, :1]
    cls_tokens = jnp.broadcast_to(cls_token.astype(x.dtype), (x.shape[0], 1, cfg.width))
    x = jnp.concatenate([cls_tokens, x], axis=1)
    x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
    x = TransformerStack(
      depth=cfg.depth,
      heads=cfg.heads,
      mlp_ratio=cfg.mlp_ratio,
      drop_path_rate=cfg.drop_path_rate,
      deterministic=not train,
      remat_policy=cfg.remat_policy,
      scan=cfg.scan_layers,
      attention_impl=cfg.attention_impl,
      name="blocks",
      **kw,
    )(x)
    return layer_norm(name="norm", **kw)(x) if self.final_norm else x


class Decoder(nn.Module):
  """Light decoder: fills in mask tokens and predicts every patch's pixels."""

  config: ModelConfig

  @nn.compact
  def __call__(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dtypes(cfg)
    x = dense(cfg.decoder_width, ("embed", "decoder_embed"), name="embed", **kw)(latent)
    if not cfg.encoder_mask_tokens:
      mask_token = self.param(
        "mask_token",
        normal_init(TOKEN_INIT_STD, (None, None, "embed")),
        (1, 1, cfg.decoder_width),
        kw["param_dtype"],
      )
      batch, num_visible = x.shape[0], x.shape[1] - 1
      mask_tokens = jnp.broadcast_to(
        mask_token.astype(x.dtype), (batch, cfg.num_patches - num_visible, cfg.decoder_width)
      )
      patch_tokens = unshuffle(jnp.concatenate([x[:, 1:], mask_tokens], axis=1), ids_restore)
      x = jnp.concatenate([x[:, :1], patch_tokens], axis=1)
    x = x + jnp.asarray(sincos_2d(cfg.decoder_width, cfg.grid_hw), x.dtype)[None]
    x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
    x = TransformerStack(
      depth=cfg.decoder_depth,
      heads=cfg.decoder_heads,
      mlp_ratio=cfg.decoder_mlp_ratio,
      remat_policy=cfg.remat_policy,
      scan=cfg.scan_layers,
      attention_impl=cfg.attention_impl,
      name="blocks",
      **kw,
    )(x)
    x = layer_norm(name="norm", **kw)(x)
    x = dense(cfg.patch_dim, ("embed", "patch"), name="pred", **kw)(x)
    return x[:, 1:]


class MaskedAutoencoder(nn.Module):
  """MAE pretraining model: `apply(variables, images, rngs={"masking": key})`.

  `encode` is the encoder-only path on all patches (probing, fine-tuning,
  feature extraction): `apply(variables, images, method="encode")`.
  """

  config: ModelConfig

  def __post_init__(self):
    # Bad sizes fail here, when the module is built: before any tracing.
    self.config.validate()
    super().__post_init__()

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def __call__(
    self, images: jax.Array, noise: jax.Array | None = None, *, train: bool = True
  ) -> MAEOutput:
    cfg = self.config
    check_images(images, cfg)
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), (images.shape[0], cfg.num_patches))
    masking = random_masking(noise, cfg.num_visible)
    latent = self.encoder(images, masking, train=train)
    pred = self.decoder(latent, masking.ids_restore)
    loss = reconstruction_loss(
      images, pred, masking.mask, patch_size=cfg.patch_size, norm_pix_loss=cfg.norm_pix_loss
    )
    return MAEOutput(loss=loss, pred=pred, mask=masking.mask, ids_restore=masking.ids_restore)

  def encode(self, images: jax.Array, *, train: bool = False) -> EncoderFeatures:
    check_images(images, self.config)
    tokens = self.encoder(images, None, train=train)
    return EncoderFeatures(cls=tokens[:, 0], pooled=tokens[:, 1:].mean(axis=1), tokens=tokens)
