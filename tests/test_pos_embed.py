"""The evaluation ViT's learned position table and the reference's
`interpolate_pos_embed` (fine-tuning or probing at another resolution).

The interpolation is checked against the reference's own procedure, written
here with torch as util/pos_embed.py does it (cls row kept, the patch grid
resized by torch's bicubic interpolate, align_corners=False).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from mae_jax.core import checkpointing, sharding
from mae_jax.core import pretrained as pretrained_lib
from mae_jax.core.state import mesh_context
from mae_jax.evaluate.layer_decay import decay_mask, layer_scales
from mae_jax.evaluate.models import ViTClassifier, evaluation_encoder
from mae_jax.model.config import TINY, ModelConfig
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.model.pos_embed import bicubic_matrix, interpolate_pos_embed, sincos_2d

MODEL = dict(TINY, depth=2, channels=1)  # the tiny preset, two blocks deep


def reference_interpolation(table: np.ndarray, new_size: int) -> np.ndarray:
  """util/pos_embed.py's interpolate_pos_embed on a (1, 1 + g*g, D) table, in
  float32 as the reference runs it (so within 1e-5 of this float64 resize)."""
  pos_embed_checkpoint = torch.from_numpy(table)
  embedding_size = pos_embed_checkpoint.shape[-1]
  num_extra_tokens = 1
  orig_size = int((pos_embed_checkpoint.shape[-2] - num_extra_tokens) ** 0.5)
  if orig_size == new_size:
    return table
  extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
  pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
  pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, embedding_size).permute(0, 3, 1, 2)
  pos_tokens = torch.nn.functional.interpolate(
    pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False
  )
  pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
  return torch.cat((extra_tokens, pos_tokens), dim=1).numpy()


@pytest.mark.parametrize(
  "old, new", [(14, 28), (14, 24), (14, 16), (16, 14), (8, 4), (4, 7), (7, 7)]
)
def test_interpolation_matches_the_reference(old, new):
  rng = np.random.default_rng(old * 100 + new)
  for table in (
    sincos_2d(64, old)[None],
    rng.normal(size=(1, 1 + old * old, 16)).astype(np.float32),  # a learned table
  ):
    ours = interpolate_pos_embed(table, new)
    assert ours.shape == (1, 1 + new * new, table.shape[-1]) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_interpolation(table, new), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours[:, 0], table[:, 0])  # the cls row is kept


def test_bicubic_rows_sum_to_one():
  for old, new in [(3, 10), (10, 3), (14, 24)]:
    matrix = bicubic_matrix(old, new)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)


def test_unbatched_table_and_a_table_that_is_not_a_grid():
  table = sincos_2d(16, 4)
  assert interpolate_pos_embed(table, 6).shape == (37, 16)
  with pytest.raises(ValueError, match="square patch grid"):
    interpolate_pos_embed(table[:-1], 6)


def _checkpoint(tmp_path, encoder_params, config: ModelConfig) -> pretrained_lib.InitCheckpoint:
  step_dir = checkpointing.write_params(
    str(tmp_path / "ckpt"), {"encoder": encoder_params}, config, source="test"
  )
  return pretrained_lib.locate(step_dir)


def _pretrained_encoder(config: ModelConfig) -> dict:
  images = np.zeros((1, config.image_size, config.image_size, 1), np.float32)
  variables = MaskedAutoencoder(config).init(
    {"params": jax.random.key(0), "masking": jax.random.key(1)}, images
  )
  return jax.device_get(nn.unbox(variables)["params"]["encoder"])


def _restore(checkpoint, config: ModelConfig) -> dict:
  mesh = sharding.make_mesh({"data": 8})
  with mesh_context(mesh, sharding.DEFAULT_RULES):
    restored = pretrained_lib.restore_encoder(
      checkpoint, evaluation_encoder, config, mesh, sharding.DEFAULT_RULES
    )
  return jax.device_get(restored)


def test_same_resolution_gives_the_pretrained_encoder_exactly(tmp_path):
  config = ModelConfig(**MODEL)
  encoder = _pretrained_encoder(config)
  restored = _restore(_checkpoint(tmp_path, encoder, config), config)
  np.testing.assert_array_equal(restored.pop("pos_embed"), sincos_2d(32, 4)[None])
  jax.tree.map(np.testing.assert_array_equal, restored, encoder)
  images = np.random.default_rng(0).normal(size=(2, 16, 16, 1)).astype(np.float32)
  restored["pos_embed"] = sincos_2d(32, 4)[None]
  learned = evaluation_encoder(config).apply({"params": restored}, images)
  fixed = (
    MaskedAutoencoder(config)
    .apply({"params": {"encoder": encoder}}, images, method="encode")
    .tokens
  )
  np.testing.assert_array_equal(learned, fixed)


def test_another_resolution_interpolates_the_checkpoint_table(tmp_path):
  pretrain = ModelConfig(**MODEL)
  checkpoint = _checkpoint(tmp_path, _pretrained_encoder(pretrain), pretrain)
  finetune = pretrain.replace(image_size=28)  # grid 4 -> 7
  restored = _restore(checkpoint, finetune)
  expected = reference_interpolation(sincos_2d(32, 4)[None], 7)
  np.testing.assert_allclose(restored["pos_embed"], expected, rtol=0, atol=1e-5)
  # Not the sin-cos table of the new grid: the reference resizes the old one.
  assert np.abs(restored["pos_embed"] - sincos_2d(32, 7)[None]).max() > 0.05
  tokens = evaluation_encoder(finetune).apply(
    {"params": restored}, np.zeros((2, 28, 28, 1), np.float32)
  )
  assert tokens.shape == (2, 1 + 49, 32)


def test_a_stored_learned_table_is_restored_and_resized(tmp_path):
  """A fine-tuned model as init_from: its own (trained) table is used."""
  config = ModelConfig(**MODEL)
  encoder = _pretrained_encoder(config)
  encoder["pos_embed"] = np.random.default_rng(3).normal(size=(1, 17, 32)).astype(np.float32)
  checkpoint = _checkpoint(tmp_path, encoder, config)
  np.testing.assert_array_equal(_restore(checkpoint, config)["pos_embed"], encoder["pos_embed"])
  restored = _restore(checkpoint, config.replace(image_size=24))
  np.testing.assert_allclose(
    restored["pos_embed"], reference_interpolation(encoder["pos_embed"], 6), rtol=0, atol=1e-5
  )


def test_the_learned_table_is_layer_zero_without_weight_decay():
  config = ModelConfig(**MODEL)
  model = ViTClassifier(config, num_classes=10)
  params = jax.eval_shape(
    lambda k: nn.unbox(model.init(k, np.zeros((1, 16, 16, 1), np.float32)))["params"],
    jax.random.key(0),
  )
  assert params["encoder"]["pos_embed"].shape == (1, 17, 32)
  scales = layer_scales(params, layer_decay=0.5, depth=config.depth)
  assert scales["encoder"]["pos_embed"] == scales["encoder"]["cls_token"] == 0.5**3
  mask = decay_mask(params)
  assert not mask["encoder"]["pos_embed"] and not mask["encoder"]["cls_token"]
