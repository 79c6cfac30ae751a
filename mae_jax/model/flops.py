"""Model FLOPs of each training job: the numerator of MFU, for the AOT planner and the benchmarks."""

from __future__ import annotations


def blocks_flops(tokens: int, width: int, depth: int, mlp_ratio: float) -> float:
  """Forward FLOPs (2 per multiply-add) of `depth` pre-norm ViT blocks:
  qkv (3 D^2), output projection (D^2), MLP (2 D H) per token, and the
  attention scores and weighted sum (2 T^2 D together)."""
  hidden = int(width * mlp_ratio)
  per_token = 2 * (4 * width * width + 2 * width * hidden)
  return depth * (tokens * per_token + 4 * tokens * tokens * width)


def forward_flops_per_image(cfg) -> dict[str, float]:
  """Model FLOPs of one forward pass for one image, by part.

  The encoder sees 1 + num_visible tokens (1 + L with the "w/ [M]" variant),
  and only those patches need embedding (mae_jax embeds just them; the
  reference embeds all L, 0.3 % more for ViT-B/16); the decoder sees 1 + L
  tokens. Only matmuls and attention count, the textbook convention behind
  MFU.
  """
  patches, patch_dim = cfg.num_patches, cfg.patch_dim
  encoder_patches = patches if cfg.encoder_mask_tokens else cfg.num_visible
  encoder_tokens = 1 + encoder_patches
  decoder_tokens = 1 + patches
  return {
    "patch_embed": 2 * encoder_patches * patch_dim * cfg.width,
    "encoder": blocks_flops(encoder_tokens, cfg.width, cfg.depth, cfg.mlp_ratio),
    "decoder_embed": 2 * encoder_tokens * cfg.width * cfg.decoder_width,
    "decoder": blocks_flops(
      decoder_tokens, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_mlp_ratio
    ),
    "prediction": 2 * decoder_tokens * cfg.decoder_width * patch_dim,
  }


def train_flops_per_image(cfg) -> float:
  """Forward + backward = 3 x forward (the usual MFU numerator)."""
  return 3 * sum(forward_flops_per_image(cfg).values())


def classifier_forward_flops_per_image(cfg) -> float:
  """One forward pass of the evaluation ViT for one image: every patch
  embedded, 1 + L tokens through the encoder (the head is negligible)."""
  patches = cfg.num_patches
  return 2 * patches * cfg.patch_dim * cfg.width + blocks_flops(
    1 + patches, cfg.width, cfg.depth, cfg.mlp_ratio
  )


def train_flops_per_example(job: str, cfg, *, cached_features: bool = False) -> float:
  """The MFU numerator of one training example of `job`: pretraining and
  fine-tuning run forward and backward (3 x forward); the probe runs the
  frozen encoder forward only (nothing, from cached features)."""
  if job == "pretrain":
    return train_flops_per_image(cfg)
  if job == "finetune":
    return 3 * classifier_forward_flops_per_image(cfg)
  if job == "linprobe":
    return 0.0 if cached_features else classifier_forward_flops_per_image(cfg)
  raise ValueError(f"no training step in job {job!r}")
