"""The authors' PyTorch state dict <-> mae_jax parameters, tensor by tensor.

One table (`tensor_specs`) lists, for a `ModelConfig`, every tensor of the
authors' `models_mae.py`: its key and shape there, where it lives in the
mae_jax tree and its shape here, and how the two relate. Import and export
both read this table, so they cannot drift apart.

How the tensors relate:
  * torch Linear weights are (out, in) and compute x @ W.T; flax kernels are
    (in, out): transpose, then reshape to the flax module's axes. The fused
    qkv weight (3D, D) has output features [q (all heads), k, v], each
    head-major, so W.T reshapes to (D, 3, heads, head_dim); the attention
    output projection's input features are head-major, so its W.T reshapes
    to (heads, head_dim, D).
  * the patch embedding is a stride-p Conv2d (D, C, p, p); here it is a
    Linear over patches flattened in (row, column, channel) order, so the
    kernel is the weight transposed to (p, p, C, D) and flattened to
    (p*p*C, D).
  * LayerNorm weight/bias are flax's scale/bias; tokens keep their shape.
  * the fixed sin-cos buffers `pos_embed` / `decoder_pos_embed` are not
    parameters here: on import they are checked against `sincos_2d` and
    dropped, on export they are recomputed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.errors import CheckpointError
from mae_jax.image_size import size_text
from mae_jax.model.config import ModelConfig
from mae_jax.model.pos_embed import sincos_2d
from mae_jax.model.stacking import unstack_layers

# A file's sin-cos buffer may differ from ours by float rounding only: 1e-4,
# or, for a half-precision file, its dtype's resolution (finfo.eps).
POS_EMBED_ATOL = 1e-4

# The first component of every decoder key in the authors' layout; a file
# with none of them is an encoder-only checkpoint (mae_pretrain_vit_*.pth).
DECODER_KEY_PREFIXES = ("decoder_", "mask_token")

RESHAPE, LINEAR, CONV = "reshape", "linear", "conv"


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  key: str  # the authors' state-dict key
  torch_shape: tuple[int, ...]  # its shape in the authors' file
  path: tuple[str, ...]  # where it lives in the mae_jax params tree
  param_shape: tuple[int, ...]  # its shape there
  kind: str = RESHAPE  # RESHAPE, LINEAR (transpose) or CONV


def linear_specs(
  key: str, path: tuple[str, ...], in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> list[TensorSpec]:
  """A torch Linear -> a flax Dense/DenseGeneral with (possibly split) axes."""
  fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
  return [
    TensorSpec(
      f"{key}.weight", (fan_out, fan_in), path + ("kernel",), in_shape + out_shape, LINEAR
    ),
    TensorSpec(f"{key}.bias", (fan_out,), path + ("bias",), out_shape),
  ]


def layer_norm_specs(key: str, path: tuple[str, ...], width: int) -> list[TensorSpec]:
  return [
    TensorSpec(f"{key}.weight", (width,), path + ("scale",), (width,)),
    TensorSpec(f"{key}.bias", (width,), path + ("bias",), (width,)),
  ]


def _blocks(
  key: str, path: tuple[str, ...], depth: int, width: int, heads: int, mlp_ratio: float
) -> list[TensorSpec]:
  head_dim, hidden = width // heads, int(width * mlp_ratio)
  specs = []
  for i in range(depth):
    k, p = f"{key}.{i}", path + (f"layer_{i}",)
    specs += layer_norm_specs(f"{k}.norm1", p + ("norm1",), width)
    specs += linear_specs(f"{k}.attn.qkv", p + ("attn", "qkv"), (width,), (3, heads, head_dim))
    specs += linear_specs(f"{k}.attn.proj", p + ("attn", "out"), (heads, head_dim), (width,))
    specs += layer_norm_specs(f"{k}.norm2", p + ("norm2",), width)
    specs += linear_specs(f"{k}.mlp.fc1", p + ("mlp", "fc1"), (width,), (hidden,))
    specs += linear_specs(f"{k}.mlp.fc2", p + ("mlp", "fc2"), (hidden,), (width,))
  return specs


def tensor_specs(config: ModelConfig, with_decoder: bool = True) -> list[TensorSpec]:
  """Every parameter of the authors' MaskedAutoencoderViT for `config`."""
  _check_representable(config)
  d, p, c = config.width, config.patch_size, config.channels
  enc = ("encoder",)
  specs = [
    TensorSpec("cls_token", (1, 1, d), enc + ("cls_token",), (1, 1, d)),
    TensorSpec(
      "patch_embed.proj.weight",
      (d, c, p, p),
      enc + ("patch_embed", "kernel"),
      (config.patch_dim, d),
      CONV,
    ),
    TensorSpec("patch_embed.proj.bias", (d,), enc + ("patch_embed", "bias"), (d,)),
  ]
  specs += _blocks("blocks", enc + ("blocks",), config.depth, d, config.heads, config.mlp_ratio)
  specs += layer_norm_specs("norm", enc + ("norm",), d)
  if not with_decoder:
    return specs
  dd, dec = config.decoder_width, ("decoder",)
  specs += linear_specs("decoder_embed", dec + ("embed",), (d,), (dd,))
  specs.append(TensorSpec("mask_token", (1, 1, dd), dec + ("mask_token",), (1, 1, dd)))
  specs += _blocks(
    "decoder_blocks",
    dec + ("blocks",),
    config.decoder_depth,
    dd,
    config.decoder_heads,
    config.decoder_mlp_ratio,
  )
  specs += layer_norm_specs("decoder_norm", dec + ("norm",), dd)
  specs += linear_specs("decoder_pred", dec + ("pred",), (dd,), (config.patch_dim,))
  return specs


def pos_embed_buffers(config: ModelConfig, with_decoder: bool = True) -> dict[str, np.ndarray]:
  """The fixed sin-cos buffers as the authors' files hold them: (1, 1 + L, width)."""
  buffers = {"pos_embed": sincos_2d(config.width, config.grid_hw)[None]}
  if with_decoder:
    buffers["decoder_pos_embed"] = sincos_2d(config.decoder_width, config.grid_hw)[None]
  return buffers


def _check_representable(config: ModelConfig) -> None:
  config.validate()
  if config.encoder_mask_tokens:
    raise CheckpointError(
      "model.encoder_mask_tokens=True (the paper's 'w/ [M]' ablation) has no "
      "counterpart in the authors' models_mae.py layout: convert a model "
      "with encoder_mask_tokens=False."
    )


def _to_param(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
  if spec.kind == LINEAR:
    array = array.T
  elif spec.kind == CONV:
    array = array.transpose(2, 3, 1, 0)  # (D, C, p, p) -> (p, p, C, D)
  return array.reshape(spec.param_shape)


def _to_torch(array: np.ndarray, spec: TensorSpec) -> np.ndarray:
  if spec.kind == LINEAR:
    return array.reshape(spec.torch_shape[::-1]).T
  if spec.kind == CONV:
    d, c, p, _ = spec.torch_shape
    return array.reshape(p, p, c, d).transpose(3, 2, 0, 1)
  return array.reshape(spec.torch_shape)


def has_decoder(authors_keys) -> bool:
  return any(k.startswith(DECODER_KEY_PREFIXES) for k in authors_keys)


def params_from_authors(
  state: Mapping[str, np.ndarray],
  config: ModelConfig,
  *,
  allow_unused: bool = False,
  file_key: Callable[[str], str] | None = None,
) -> dict:
  """Authors' state dict -> mae_jax params (unscanned, `layer_{i}`).

  Without any decoder key the result is encoder-only: {"encoder": ...}.
  Raises one CheckpointError listing every missing key, wrong shape, bad sin-cos
  buffer and (unless `allow_unused`) unexpected key. `file_key` gives the
  file's own name of an authors' key, for messages about renamed files.
  """
  file_key = file_key or (lambda key: key)

  def name(key: str) -> str:
    source = file_key(key)
    return key if source == key else f"{key} ({source} in the file)"

  with_decoder = has_decoder(state)
  specs = tensor_specs(config, with_decoder)
  problems = []
  params: dict = {}
  for spec in specs:
    if spec.key not in state:
      problems.append(f"missing key {name(spec.key)}: expected shape {spec.torch_shape}")
      continue
    found = tuple(np.shape(state[spec.key]))
    if found != spec.torch_shape:
      problems.append(f"{name(spec.key)}: expected shape {spec.torch_shape}, found {found}")
      continue
    array = np.asarray(
      _to_param(np.asarray(state[spec.key]), spec), dtype=jnp.dtype(config.param_dtype)
    )
    _set(params, spec.path, array)

  buffers = pos_embed_buffers(config, with_decoder)
  for key, expected in buffers.items():
    if key in state:  # optional: they are not parameters
      problems += _check_buffer(name(key), np.asarray(state[key]), expected, config)

  unexpected = sorted(set(state) - {s.key for s in specs} - set(buffers))
  if unexpected and not allow_unused:
    problems.append(
      f"unexpected keys (pass allow_unused / --allow_unused to ignore them, "
      f"e.g. a fine-tuned classifier head): {[file_key(k) for k in unexpected]}"
    )
  if problems:
    raise CheckpointError(
      f"the state dict does not fit the model (patch {config.patch_size}, "
      f"width {config.width}, depth {config.depth}, heads {config.heads}, image "
      f"{size_text(config.image_size)}, channels {config.channels}"
      + (
        f", decoder {config.decoder_width}/{config.decoder_depth}/{config.decoder_heads}"
        if with_decoder
        else ", encoder only"
      )
      + "):\n  "
      + _listing(problems)
    )
  return params


def _check_buffer(
  key: str, found: np.ndarray, expected: np.ndarray, config: ModelConfig
) -> list[str]:
  if found.shape != expected.shape:
    rows, cols = config.grid_hw
    return [
      f"{key}: expected shape {expected.shape} (a {rows}x{cols} patch grid plus the cls "
      f"row, image {size_text(config.image_size)}), found {found.shape} (a table of "
      f"{found.shape[-2] - 1} patches): is --image_size={size_text(config.image_size)} the "
      "size the file was made for?"
    ]
  difference = float(np.max(np.abs(found.astype(np.float64) - expected)))
  is_float = jnp.issubdtype(found.dtype, jnp.floating)
  tolerance = max(POS_EMBED_ATOL, float(jnp.finfo(found.dtype).eps) if is_float else 0.0)
  if not difference <= tolerance:
    return [
      f"{key} differs from the fixed 2-D sin-cos table by up to {difference:.3g} "
      f"(> {tolerance:.3g}): this file was not made with fixed sin-cos "
      "positional embeddings, which is all mae_jax supports"
    ]
  return []


def authors_from_params(params: Mapping, config: ModelConfig) -> dict[str, np.ndarray]:
  """mae_jax params (either layer layout; encoder-only allowed) -> authors' state dict.

  Float32 numpy arrays, plus the `pos_embed` / `decoder_pos_embed` buffers
  the authors' files carry.
  """
  params = unstack_layers(params)
  with_decoder = "decoder" in params
  state = state_from_specs(params, tensor_specs(config, with_decoder))
  state.update(pos_embed_buffers(config, with_decoder))
  return state


def state_from_specs(params: Mapping, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
  """The torch state dict `specs` describe, from unstacked mae_jax `params`:
  every spec filled with its shape checked, and nothing of `params` left
  over (CheckpointError listing what is wrong)."""
  state, problems, used = {}, [], set()
  for spec in specs:
    try:
      leaf = _get(params, spec.path)
    except (KeyError, TypeError):
      problems.append(f"missing parameter {'/'.join(spec.path)}: expected shape {spec.param_shape}")
      continue
    used.add(spec.path)
    if tuple(leaf.shape) != spec.param_shape:
      problems.append(
        f"{'/'.join(spec.path)}: expected shape {spec.param_shape}, found {tuple(leaf.shape)}"
      )
      continue
    state[spec.key] = np.ascontiguousarray(_to_torch(np.asarray(leaf, dtype=np.float32), spec))
  unexpected = sorted(
    "/".join(str(k.key) for k in path)
    for path, _ in jax.tree_util.tree_leaves_with_path(params)
    if tuple(str(k.key) for k in path) not in used
  )
  if unexpected:
    problems.append(f"parameters the authors' layout has no place for: {unexpected}")
  if problems:
    raise CheckpointError("cannot export these parameters:\n  " + _listing(problems))
  return state


def _listing(problems: list[str], shown: int = 25) -> str:
  """One problem a line; a wrong preset would otherwise print hundreds."""
  more = len(problems) - shown
  return "\n  ".join(problems[:shown] + ([f"... and {more} more"] if more > 0 else []))


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree
