"""Fixed 2-D sin-cos positional embeddings (not parameters).

The reference builds its grid with `meshgrid(grid_w, grid_h)` and embeds the
first element (the column index w) first, so a patch's vector is
`[sin(w*omega), cos(w*omega), sin(h*omega), cos(h*omega)]`. Computed in
float64 with numpy, as the reference does, then cast to float32. A grid of
rows x columns (a rectangular image) is the same construction over
`arange(columns)` and `arange(rows)`.
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


def _grid(grid) -> tuple[int, int]:
  """An int g (a g x g grid) or (rows, columns)."""
  return (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) else (grid, grid)


def sincos_2d(embed_dim: int, grid, with_cls_row: bool = True) -> np.ndarray:
  """(rows * columns [+1], embed_dim) float32 table of a grid (an int g: g x
  g; or (rows, columns)), patches in row-major order.

  With `with_cls_row`, a row of zeros for the cls token comes first.
  """
  if embed_dim % 4:
    raise ValueError(f"embed_dim={embed_dim} must be a multiple of 4.")
  grid_rows, grid_cols = _grid(grid)
  rows, cols = np.meshgrid(np.arange(grid_rows), np.arange(grid_cols), indexing="ij")
  table = np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)
  if with_cls_row:
    table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
  return table.astype(np.float32)


# torch's bicubic interpolation (upsample_bicubic2d) uses Keys' cubic
# convolution with A = -0.75, not the -0.5 of jax.image.resize / Pillow.
_TORCH_BICUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """(M,) fractional offsets -> (M, 4) weights of the taps at -1, 0, 1, 2."""
  a = _TORCH_BICUBIC_A

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix M with M @ x = torch's
  interpolate(x, size=out_size, mode="bicubic", align_corners=False) along
  one axis: source x = (dst + 0.5) * in/out - 0.5, taps clamped to the
  border, no antialiasing (torch's default, also when shrinking)."""
  source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  floor = np.floor(source)
  weights = _cubic_weights(source - floor)
  taps = np.clip(floor[:, None].astype(np.int64) + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.reshape(-1)), weights.reshape(-1))
  return matrix


def interpolate_pos_embed(
  table: np.ndarray, new_grid, extra_tokens: int = 1, old_grid=None
) -> np.ndarray:
  """A (extra + rows*cols, D) position table resized to the grid `new_grid`
  (an int g: g x g; or (rows, columns)).

  The reference's util/pos_embed.py `interpolate_pos_embed`, used to
  fine-tune or probe a checkpoint at another resolution: the leading
  `extra_tokens` rows (the cls token) are kept, the patch grid is resized
  bicubically as torch does it, each axis on its own (so rectangles go to
  and from squares and other rectangles). The table's own grid is
  `old_grid`, or square when not given. A leading batch axis of 1 is kept.
  """
  batched = table.ndim == 3
  rows = np.asarray(table[0] if batched else table)
  count = rows.shape[0] - extra_tokens
  if old_grid is None:
    side = int(round(count**0.5))
    if side * side != count:
      raise ValueError(
        f"a position table of {rows.shape[0]} rows is not {extra_tokens} extra rows "
        "plus a square patch grid: give its grid (rows, columns)."
      )
    old_grid = side
  (old_rows, old_cols), (new_rows, new_cols) = _grid(old_grid), _grid(new_grid)
  if old_rows * old_cols != count:
    raise ValueError(
      f"a position table of {rows.shape[0]} rows is not {extra_tokens} extra rows plus a "
      f"{old_rows}x{old_cols} patch grid."
    )
  if (old_rows, old_cols) == (new_rows, new_cols):
    resized = rows
  else:
    patches = rows[extra_tokens:].astype(np.float64).reshape(old_rows, old_cols, -1)
    down, across = bicubic_matrix(old_rows, new_rows), bicubic_matrix(old_cols, new_cols)
    patches = np.einsum("hy,yxd,wx->hwd", down, patches, across)
    patches = patches.reshape(new_rows * new_cols, -1).astype(rows.dtype)
    resized = np.concatenate([rows[:extra_tokens], patches], axis=0)
  return resized[None] if batched else resized
