"""Block stacking: separate layers (`layer_{i}`) vs scanned (`layers`).

Checkpoint metadata records which one a checkpoint holds as "param_layout"
("layer_i" or "layers"; the key name predates this module).

`nn.scan` stores a stack's blocks as one subtree whose leaves have a leading
`depth` axis. Converters and checkpoints of other layouts use the per-layer
form; these two functions move between them, for every `blocks` subtree in
the parameter tree (encoder and decoder).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The name of block i in the per-layer layout.
LAYER_KEY = re.compile(r"layer_(\d+)$")


def _map_blocks(tree: Any, fn) -> Any:
  if not isinstance(tree, Mapping):
    return tree
  return {
    key: fn(value) if key == "blocks" else _map_blocks(value, fn) for key, value in tree.items()
  }


def stack_layers(params: Mapping) -> dict:
  """{'blocks': {'layer_0': t0, 'layer_1': t1}} -> {'blocks': {'layers': stack(t0, t1)}}."""

  def stack(blocks):
    if "layers" in blocks:
      return dict(blocks)
    indices = sorted(int(LAYER_KEY.match(k).group(1)) for k in blocks)
    if indices != list(range(len(indices))):
      raise ValueError(f"layers {indices} are not numbered 0..{len(indices) - 1}.")
    layers = [blocks[f"layer_{i}"] for i in indices]
    xp = np if isinstance(jax.tree.leaves(layers[0])[0], np.ndarray) else jnp
    return {"layers": jax.tree.map(lambda *xs: xp.stack(xs), *layers)}

  return _map_blocks(params, stack)


def unstack_layers(params: Mapping) -> dict:
  """Inverse of `stack_layers`."""

  def unstack(blocks):
    if "layers" not in blocks:
      return dict(blocks)
    stacked = blocks["layers"]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    return {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(depth)}

  return _map_blocks(params, unstack)
