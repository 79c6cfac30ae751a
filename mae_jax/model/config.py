"""Model sizes: the reference presets and validation of custom sizes.

A `ModelConfig` is a frozen (hashable) dataclass so it can be a field of a
linen module and a static argument of `jax.jit`. `validate()` raises a
`ConfigError` (a `ValueError`; the CLI prints it in one line, exit 2) naming the field, the value and what is allowed; the model calls
it in `setup`, i.e. before anything is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from mae_jax.errors import ConfigError
from mae_jax.image_size import image_hw
from mae_jax.model.masking import num_kept

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and switches of a masked autoencoder.

  Attributes mirror the reference `MaskedAutoencoderViT` constructor, plus
  the knobs that matter on accelerators (dtype, remat, scan).
  """

  # An int is square; (height, width) is a rectangle (video frames,
  # documents, satellite tiles). A list (from JSON metadata) becomes a tuple.
  image_size: int | tuple[int, int] = 224
  patch_size: int = 16
  channels: int = 3
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: float = 4.0
  decoder_width: int = 512
  decoder_depth: int = 8
  decoder_heads: int = 16
  decoder_mlp_ratio: float = 4.0
  mask_ratio: float = 0.75
  norm_pix_loss: bool = True
  # The paper's "w/ [M]" ablation: the encoder also processes mask tokens
  # (all L patches), which is what the visible-only encoder saves.
  encoder_mask_tokens: bool = False
  # Numerics: activations in `dtype` (bfloat16 on TPU/GPU), weights and
  # optimizer state in `param_dtype`.
  dtype: str = "float32"
  param_dtype: str = "float32"
  # Memory: rematerialise each block with a named policy; scan over layers
  # to compile one block instead of `depth` copies.
  remat_policy: str = "none"
  scan_layers: bool = False
  # Stochastic depth, used by fine-tuning (0 for pretraining, as the reference).
  drop_path_rate: float = 0.0
  # "xla" (default): explicit head-major einsums (vit.attention_heads_first);
  # "cudnn" (fused flash attention on NVIDIA GPUs) or None (JAX chooses):
  # through `jax.nn.dot_product_attention`.
  attention_impl: str | None = "xla"

  def __post_init__(self):
    if isinstance(self.image_size, (list, tuple)):
      object.__setattr__(self, "image_size", tuple(self.image_size))

  @property
  def image_hw(self) -> tuple[int, int]:
    """(height, width) in pixels."""
    return image_hw(self.image_size)

  @property
  def grid_hw(self) -> tuple[int, int]:
    """(rows, columns) of the patch grid."""
    height, width = self.image_hw
    return height // self.patch_size, width // self.patch_size

  @property
  def num_patches(self) -> int:
    rows, cols = self.grid_hw
    return rows * cols

  @property
  def patch_dim(self) -> int:
    """Pixels per patch: the decoder's output width and the loss target."""
    return self.patch_size**2 * self.channels

  @property
  def num_visible(self) -> int:
    """Tokens the encoder keeps per image: int(L * (1 - mask_ratio))."""
    return num_kept(self.num_patches, self.mask_ratio)

  def replace(self, **changes: Any) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def validate(self) -> "ModelConfig":
    """Raises ConfigError for any size or switch the model cannot honour."""
    size = self.image_size
    pair = isinstance(size, tuple) and len(size) == 2
    if not (pair or isinstance(size, int)) or not all(
      isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in (size if pair else (size,))
    ):
      raise ConfigError(
        f"model.image_size={size!r}: must be a positive integer (square) or (height, width)."
      )
    for name in (
      "patch_size",
      "width",
      "depth",
      "heads",
      "decoder_width",
      "decoder_depth",
      "decoder_heads",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"model.{name}={value!r}: must be a positive integer.")
    if self.channels not in (1, 3):
      raise ConfigError(f"model.channels={self.channels!r}: must be 1 or 3.")
    if any(n % self.patch_size for n in self.image_hw):
      suggestion = tuple(max(n // self.patch_size, 1) * self.patch_size for n in self.image_hw)
      raise ConfigError(
        f"model.image_size={self.image_size} is not divisible by "
        f"model.patch_size={self.patch_size}: choose an image size that is a "
        f"multiple of the patch size on each side (e.g. "
        f"{suggestion[0] if isinstance(self.image_size, int) else suggestion})."
      )
    for width_field, heads_field in (("width", "heads"), ("decoder_width", "decoder_heads")):
      width, heads = getattr(self, width_field), getattr(self, heads_field)
      if width % heads:
        raise ConfigError(
          f"model.{heads_field}={heads} does not divide "
          f"model.{width_field}={width}: the head count must divide the width."
        )
    if self.width % 4 or self.decoder_width % 4:
      raise ConfigError(
        f"model.width={self.width} and model.decoder_width="
        f"{self.decoder_width} must be multiples of 4 (2-D sin-cos "
        "positional embedding)."
      )
    for name in ("mlp_ratio", "decoder_mlp_ratio"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"model.{name}={value!r}: must be > 0.")
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ConfigError(
        f"model.mask_ratio={self.mask_ratio!r}: must be in [0, 1) (the reference uses 0.75)."
      )
    if self.num_visible < 1:
      raise ConfigError(
        f"model.mask_ratio={self.mask_ratio} keeps no patch of "
        f"{self.num_patches}: int(L * (1 - mask_ratio)) must be >= 1."
      )
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
          f"model.{name}={getattr(self, name)!r}: must be one of 'float32', 'bfloat16', 'float16'."
        )
    if self.remat_policy not in REMAT_POLICIES:
      raise ConfigError(
        f"model.remat_policy={self.remat_policy!r}: must be one of {REMAT_POLICIES}."
      )
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ConfigError(f"model.drop_path_rate={self.drop_path_rate!r}: must be in [0, 1).")
    if self.attention_impl not in ("xla", "cudnn", None):
      raise ConfigError(
        f"model.attention_impl={self.attention_impl!r}: must be 'xla', 'cudnn' or None."
      )
    # JAX's cuDNN attention refuses odd sequence lengths when training
    # (jax._src.cudnn.fused_attention_stablehlo; measured with a deviceless
    # GPU compile, docs/tpu_gpu.md): the encoder sees 1 + visible tokens,
    # the decoder (and fine-tuning's encoder) 1 + all patches.
    tokens = {"encoder": 1 + self.num_visible, "decoder": 1 + self.num_patches}
    if self.attention_impl == "cudnn" and any(count % 2 for count in tokens.values()):
      counts = ", ".join(f"{name} {count}" for name, count in tokens.items())
      raise ConfigError(
        f"model.attention_impl='cudnn': JAX's cuDNN attention refuses odd sequence lengths "
        f"in training, and this model has {counts} tokens (class token included). Use "
        "attention_impl='xla' (or None), or an image_size / mask_ratio giving even counts "
        "(e.g. ViT-B/16 at 240 px with mask_ratio=0.755: 56 and 226)."
      )
    return self


# Reference encoders (ViT-Ti/S come from DeiT; B/L/H from the MAE paper), each
# with the reference decoder: 512 wide, 8 deep, 16 heads.
_ENCODER_SIZES: Mapping[str, dict[str, int]] = {
  "Ti/16": dict(patch_size=16, width=192, depth=12, heads=3),
  "S/16": dict(patch_size=16, width=384, depth=12, heads=6),
  "B/16": dict(patch_size=16, width=768, depth=12, heads=12),
  "L/16": dict(patch_size=16, width=1024, depth=24, heads=16),
  "H/14": dict(patch_size=14, width=1280, depth=32, heads=16),
}

# The smallest model that still has every part (one block on each side, a
# 4x4 patch grid): the one size of the tests and of the benchmarks' --tiny.
TINY = dict(
  image_size=16,
  patch_size=4,
  width=32,
  depth=1,
  heads=2,
  decoder_width=32,
  decoder_depth=1,
  decoder_heads=2,
)

PRESETS = (*_ENCODER_SIZES, "tiny")


def preset(name: str, **overrides: Any) -> ModelConfig:
  """`preset("B/16")` is MAE ViT-B/16 at 224 px; overrides change any field."""
  # Accept "vit_base"-style names too, as used by the configs.
  aliases = {
    "vit_tiny": "Ti/16",
    "vit_small": "S/16",
    "vit_base": "B/16",
    "vit_large": "L/16",
    "vit_huge": "H/14",
  }
  key = aliases.get(name, name)
  if key == "tiny":
    return ModelConfig(**{**TINY, **overrides}).validate()
  if key not in _ENCODER_SIZES:
    raise ConfigError(
      f"model preset {name!r} is unknown: choose one of {list(PRESETS)} "
      f"(or {list(aliases)}), or give the sizes explicitly."
    )
  fields = dict(_ENCODER_SIZES[key])
  fields.update(overrides)
  return ModelConfig(**fields).validate()
