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


def interpolate_pos_embed(table: np.ndarray, new_grid: int, extra_tokens: int = 1) -> np.ndarray:
  """A (extra + g*g, D) position table resized to (extra + new_grid**2, D).

  The reference's util/pos_embed.py `interpolate_pos_embed`, used to
  fine-tune or probe a checkpoint at another resolution: the leading
  `extra_tokens` rows (the cls token) are kept, the g x g patch grid is
  resized bicubically as torch does it. A leading batch axis of 1 is kept.
  """
  batched = table.ndim == 3
  rows = np.asarray(table[0] if batched else table)
  grid = int(round((rows.shape[0] - extra_tokens) ** 0.5))
  if grid * grid != rows.shape[0] - extra_tokens:
    raise ValueError(
      f"a position table of {rows.shape[0]} rows is not {extra_tokens} extra rows "
      "plus a square patch grid."
    )
  if grid == new_grid:
    resized = rows
  else:
    patches = rows[extra_tokens:].astype(np.float64).reshape(grid, grid, -1)
    matrix = bicubic_matrix(grid, new_grid)
    patches = np.einsum("hy,yxd,wx->hwd", matrix, patches, matrix)
    patches = patches.reshape(new_grid * new_grid, -1).astype(rows.dtype)
    resized = np.concatenate([rows[:extra_tokens], patches], axis=0)
  return resized[None] if batched else resized
