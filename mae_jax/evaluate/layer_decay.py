"""Fine-tuning AdamW with layer-wise learning-rate decay (reference util/lr_decay.py).

Layer ids: the patch embedding, cls token and position table are layer 0,
encoder block i is layer i + 1, everything else (final norm, fc_norm,
head) is layer depth + 1. A parameter's learning rate is multiplied by

  layer_decay ** (depth + 1 - layer_id)

so the head trains at the full rate and the patch embedding at
layer_decay ** (depth + 1). Weight decay applies to weight kernels only:
not to biases, norms (the reference's 1-D rule), the cls token nor the
learned position table (its no-weight-decay list). The scale multiplies
the whole AdamW update, decay included, as the reference's per-group
learning rate does.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from mae_jax.model.stacking import LAYER_KEY

_EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed")


def _names(path) -> list[str]:
  return [str(getattr(entry, "key", entry)) for entry in path]


def layer_id(names: list[str], depth: int) -> int | None:
  """Layer id of a parameter path; None for the stacked `layers` of a scanned stack."""
  if any(name in _EMBEDDING_NAMES for name in names):
    return 0
  if "blocks" in names:
    below = names[names.index("blocks") + 1]
    match = LAYER_KEY.match(below)
    if match:
      return int(match.group(1)) + 1
    if below == "layers":
      return None
  return depth + 1


def layer_scales(params: Any, *, layer_decay: float, depth: int) -> Any:
  """A tree like `params` of learning-rate multipliers.

  Scanned stacks (`blocks/layers`, leading depth axis) get one multiplier
  per layer, shaped to broadcast against the stacked parameter.
  """

  def scale(path, leaf):
    lid = layer_id(_names(path), depth)
    if lid is not None:
      return np.float32(layer_decay ** (depth + 1 - lid))
    per_layer = np.asarray([layer_decay ** (depth - i) for i in range(depth)], np.float32)
    return per_layer.reshape((depth,) + (1,) * (len(leaf.shape) - 1))

  return jax.tree_util.tree_map_with_path(scale, params)


def decay_mask(params: Any) -> Any:
  """True for weight kernels (the reference's >= 2-D weights, cls token and pos_embed excluded)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] == "kernel", params)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
  """Multiplies each update by a fixed per-parameter factor."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def finetune_adamw(
  learning_rate: optax.ScalarOrSchedule,
  params: Any,
  *,
  depth: int,
  layer_decay: float,
  b1: float = 0.9,
  b2: float = 0.999,
  weight_decay: float = 0.05,
) -> optax.GradientTransformation:
  """AdamW (decoupled decay) with per-layer learning-rate multipliers.

  `params` may be abstract (shapes only): only its structure and ranks are read.
  """
  return optax.chain(
    optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8),
    optax.add_decayed_weights(weight_decay, mask=decay_mask),
    scale_by_tree(layer_scales(params, layer_decay=layer_decay, depth=depth)),
    optax.scale_by_learning_rate(learning_rate),
  )
