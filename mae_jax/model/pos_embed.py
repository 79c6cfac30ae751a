"""Fixed 2-D sin-cos positional embeddings (not parameters).

The reference builds its grid with `meshgrid(grid_w, grid_h)` and embeds the
first element (the column index w) first, so a patch's vector is
`[sin(w*omega), cos(w*omega), sin(h*omega), cos(h*omega)]`. Computed in
float64 with numpy, as the reference does, then cast to float32.
"""

import numpy as np


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """(M,) positions -> (M, embed_dim) as [sin(pos*omega), cos(pos*omega)]."""
  if embed_dim % 2:
    raise ValueError(f"embed_dim={embed_dim} must be even.")
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(embed_dim: int, grid_size: int, with_cls_row: bool = True) -> np.ndarray:
  """(grid_size**2 [+1], embed_dim) float32 table, patches in row-major order.

  With `with_cls_row`, a row of zeros for the cls token comes first.
  """
  if embed_dim % 4:
    raise ValueError(f"embed_dim={embed_dim} must be a multiple of 4.")
  rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
  table = np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)
  if with_cls_row:
    table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
  return table.astype(np.float32)
