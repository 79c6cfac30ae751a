"""reconstructions.png: what the model fills in, for held-out images.

Rows per image: original | masked input | reconstruction | reconstruction
with the visible patches pasted back. With norm-pix targets the prediction
of a patch is in units of that patch's own mean and std; to draw it we use
the *true* per-patch statistics of the original image. That leaks a little
of the answer (brightness and contrast of each removed patch), and the
picture says so in its caption.
"""

from __future__ import annotations

import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from mae_jax.model.loss import NORM_PIX_EPS
from mae_jax.model.patches import patchify, unpatchify  # einops: numpy works too


def reconstruction_panels(
  images: np.ndarray,
  pred: np.ndarray,
  mask: np.ndarray,
  *,
  patch_size: int,
  norm_pix_loss: bool,
  mean,
  std,
) -> np.ndarray:
  """Returns (N, 4, H, W, C) panels in [0, 1] display space."""
  images = np.asarray(images, np.float32)
  pred = np.asarray(pred, np.float32)
  channels = images.shape[-1]
  grid = (images.shape[1] // patch_size, images.shape[2] // patch_size)
  target = patchify(images, patch_size)
  if norm_pix_loss:
    patch_mean = target.mean(-1, keepdims=True)
    patch_std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + NORM_PIX_EPS)
    pred = pred * patch_std + patch_mean
  removed = np.asarray(mask, np.float32)[..., None]
  reconstruction = unpatchify(pred, patch_size, channels, grid)
  pasted = unpatchify(target * (1 - removed) + pred * removed, patch_size, channels, grid)
  panels = np.stack([images, images, reconstruction, pasted], axis=1)
  # Undo the dataset normalisation for display.
  panels = panels * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  # Removed patches of the masked input are drawn mid-grey.
  removed_pixels = unpatchify(np.broadcast_to(removed, target.shape), patch_size, channels, grid)
  panels[:, 1] = np.where(removed_pixels > 0, 0.5, panels[:, 1])
  return np.clip(panels, 0.0, 1.0)


def save_reconstructions(path: str, panels: np.ndarray, *, caption: str, scale: int = 4) -> None:
  n, cols, h, w, c = panels.shape
  pad, header = 2, 28
  tile_h, tile_w = h * scale, w * scale
  canvas = Image.new(
    "RGB", (cols * (tile_w + pad) + pad, header + n * (tile_h + pad) + pad), "white"
  )
  draw = ImageDraw.Draw(canvas)
  draw.text((pad, 2), "original | masked | reconstruction | reconstruction + visible", fill="black")
  draw.text((pad, 14), caption, fill="black")
  for row in range(n):
    for col in range(cols):
      tile = (panels[row, col] * 255).round().astype(np.uint8)
      tile = np.repeat(tile, 3, axis=-1) if c == 1 else tile
      image = Image.fromarray(tile).resize((tile_w, tile_h), Image.NEAREST)
      canvas.paste(image, (pad + col * (tile_w + pad), header + pad + row * (tile_h + pad)))
  with epath.Path(path).open("wb") as f:  # The workdir may be a bucket.
    canvas.save(f, format="PNG")
