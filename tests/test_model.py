"""Properties of the model against the reference recipe (no PyTorch needed).

Masking, the sin-cos table, patch order, initialisation, parameter counts,
input validation, and that dtype / remat / scan change nothing but speed.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax.model.config import ModelConfig, preset
from mae_jax.model.loss import reconstruction_loss
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.model.masking import gather_tokens, num_kept, random_masking, unshuffle
from mae_jax.model.patches import patchify, unpatchify
from mae_jax.model.pos_embed import sincos_2d
from mae_jax.model.stacking import stack_layers, unstack_layers

TINY = ModelConfig(
  image_size=32,
  patch_size=4,
  channels=3,
  width=64,
  depth=2,
  heads=4,
  decoder_width=32,
  decoder_depth=1,
  decoder_heads=4,
)


# Everything runs under jit: linen's eager op-by-op dispatch is many times
# slower than compiling these small models.
@functools.lru_cache(maxsize=None)
def init_params(config: ModelConfig, seed: int = 0):
  images = jnp.zeros((1, config.image_size, config.image_size, config.channels))
  init = jax.jit(MaskedAutoencoder(config).init)
  variables = init({"params": jax.random.key(seed), "masking": jax.random.key(seed + 1)}, images)
  return nn.unbox(variables["params"])


@functools.lru_cache(maxsize=None)
def jitted_apply(config: ModelConfig):
  """(params, images, masking key) -> MAEOutput, compiled once per config."""
  return jax.jit(
    lambda params, images, key: MaskedAutoencoder(config).apply(
      {"params": params}, images, rngs={"masking": key}
    )
  )


@functools.lru_cache(maxsize=None)
def jitted_loss_and_grads(config: ModelConfig):
  def loss_fn(params, images):
    return jitted_apply(config)(params, images, jax.random.key(42)).loss

  return jax.jit(jax.value_and_grad(loss_fn))


def random_images(config: ModelConfig, batch: int = 4, seed: int = 0) -> jax.Array:
  return jax.random.normal(
    jax.random.key(seed), (batch, config.image_size, config.image_size, config.channels)
  )


def count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# --- masking -------------------------------------------------------------------


def test_masking_keeps_exactly_len_keep_per_sample():
  noise = jax.random.uniform(jax.random.key(0), (8, 196))
  masking = random_masking(noise, 49)
  assert masking.ids_keep.shape == (8, 49)
  np.testing.assert_array_equal(masking.mask.sum(axis=1), np.full(8, 196 - 49))
  # The kept patches are exactly those with mask 0, and the lowest-noise ones.
  kept = np.take_along_axis(np.asarray(masking.mask), np.asarray(masking.ids_keep), axis=1)
  assert not kept.any()
  threshold = np.sort(np.asarray(noise), axis=1)[:, 48:49]
  np.testing.assert_array_equal(np.asarray(masking.mask), np.asarray(noise) > threshold)


def test_ids_restore_inverts_the_shuffle():
  noise = jax.random.uniform(jax.random.key(1), (4, 64))
  masking = random_masking(noise, 16)
  ids_shuffle = jnp.argsort(noise, axis=1)
  restored = jnp.take_along_axis(ids_shuffle, masking.ids_restore, axis=1)
  np.testing.assert_array_equal(restored, np.broadcast_to(np.arange(64), (4, 64)))
  np.testing.assert_array_equal(masking.ids_keep, ids_shuffle[:, :16])


def test_unshuffle_of_shuffle_is_identity():
  tokens = jax.random.normal(jax.random.key(2), (3, 49, 8))
  noise = jax.random.uniform(jax.random.key(3), (3, 49))
  masking = random_masking(noise, 12)
  shuffled = gather_tokens(tokens, jnp.argsort(noise, axis=1))
  np.testing.assert_array_equal(unshuffle(shuffled, masking.ids_restore), tokens)


def test_masks_differ_across_batch_and_keys():
  params, images = init_params(TINY), random_images(TINY, batch=4)
  masks = [
    np.asarray(jitted_apply(TINY)(params, images, jax.random.key(seed)).mask) for seed in (10, 11)
  ]
  for mask in masks:
    assert len({row.tobytes() for row in mask}) == 4, "samples share a mask"
  assert not np.array_equal(masks[0], masks[1]), "the key does not change the mask"


@pytest.mark.parametrize(
  "name,kept,patches", [("B/16", 49, 196), ("L/16", 49, 196), ("H/14", 64, 256)]
)
def test_reference_mask_ratio_keeps_the_reference_count(name, kept, patches):
  config = preset(name)
  assert (config.num_visible, config.num_patches) == (kept, patches)
  assert num_kept(patches, 0.75) == kept
  noise = jax.random.uniform(jax.random.key(0), (2, patches))
  assert np.all(np.asarray(random_masking(noise, kept).mask).sum(axis=1) == patches - kept)


def test_masking_under_jit():
  noise = jax.random.uniform(jax.random.key(4), (4, 64))
  jitted = jax.jit(random_masking, static_argnums=1)(noise, 16)
  eager = random_masking(noise, 16)
  for got, want in zip(jitted, eager):
    np.testing.assert_array_equal(got, want)
  params, images = init_params(TINY), random_images(TINY)
  output = jitted_apply(TINY)(params, images, jax.random.key(5))
  np.testing.assert_array_equal(output.mask.sum(axis=1), np.full(4, 64 - 16))


# --- the loss --------------------------------------------------------------------


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_ignores_visible_patches(norm_pix_loss):
  """With fixed predictions, only removed patches' pixels enter the loss."""
  p, grid = 4, 4
  images = jax.random.normal(jax.random.key(6), (2, grid * p, grid * p, 3))
  pred = jax.random.normal(jax.random.key(7), (2, grid * grid, p * p * 3))
  mask = random_masking(jax.random.uniform(jax.random.key(8), (2, grid * grid)), 4).mask
  loss = lambda x: reconstruction_loss(x, pred, mask, patch_size=p, norm_pix_loss=norm_pix_loss)
  visible = int(np.argmin(np.asarray(mask[0])))  # a patch with mask 0
  removed = int(np.argmax(np.asarray(mask[0])))  # a patch with mask 1

  def perturb(patch_index):
    patches = patchify(images, p)
    patches = patches.at[0, patch_index].add(jax.random.normal(jax.random.key(9), (p * p * 3,)))
    return unpatchify(patches, p, 3)

  assert float(loss(perturb(visible))) == float(loss(images))
  assert float(loss(perturb(removed))) != float(loss(images))


def test_constant_patch_under_norm_pix_gives_finite_loss_and_gradient():
  config = TINY.replace(norm_pix_loss=True)
  images = jnp.full((4, 32, 32, 3), 0.5)
  loss, grads = jitted_loss_and_grads(config)(init_params(config), images)
  assert np.isfinite(float(loss))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --- positional embedding and patch order -------------------------------------------


def test_sincos_table_order_by_hand():
  width, grid = 8, 3
  table = sincos_2d(width, grid)
  assert table.shape == (1 + grid * grid, width) and table.dtype == np.float32
  np.testing.assert_array_equal(table[0], np.zeros(width))  # the cls row
  omega = np.array([1.0, 1.0 / 100.0])  # 1 / 10000 ** (arange(D/4) / (D/4)), D/4 = 2
  for row, col in [(0, 1), (1, 2), (2, 0)]:
    w, h = col * omega, row * omega
    expected = np.concatenate([np.sin(w), np.cos(w), np.sin(h), np.cos(h)])
    np.testing.assert_allclose(table[1 + row * grid + col], expected, atol=1e-7)
  np.testing.assert_array_equal(sincos_2d(width, grid, with_cls_row=False), table[1:])


def test_patchify_order_on_a_hand_made_image():
  p, channels = 2, 2
  rows, cols, chans = np.meshgrid(np.arange(4), np.arange(4), np.arange(channels), indexing="ij")
  image = (100 * rows + 10 * cols + chans)[None].astype(np.float32)  # (1, 4, 4, 2)
  patches = np.asarray(patchify(jnp.asarray(image), p))
  assert patches.shape == (1, 4, p * p * channels)
  # Patch 1 is grid row 0, column 1; its pixels in (row, column, channel) order.
  np.testing.assert_array_equal(patches[0, 1], [20, 21, 30, 31, 120, 121, 130, 131])
  # Patch 2 starts the second grid row.
  np.testing.assert_array_equal(patches[0, 2], [200, 201, 210, 211, 300, 301, 310, 311])
  np.testing.assert_array_equal(unpatchify(jnp.asarray(patches), p, channels), image)


def test_patchify_round_trip():
  images = jax.random.normal(jax.random.key(0), (2, 28, 28, 3))
  np.testing.assert_array_equal(unpatchify(patchify(images, 7), 7, 3), images)


# --- initialisation ----------------------------------------------------------------


def assert_xavier_uniform(kernel, fan_in: int, fan_out: int, name: str):
  bound = math.sqrt(6.0 / (fan_in + fan_out))
  values = np.asarray(kernel).ravel()
  assert np.abs(values).max() <= bound, f"{name}: exceeds the xavier bound {bound:.4f}"
  assert np.abs(values).max() > 0.95 * bound, f"{name}: narrower than xavier"
  np.testing.assert_allclose(values.std(), bound / math.sqrt(3), rtol=0.05, err_msg=name)
  assert abs(values.mean()) < 0.05 * bound, name


def test_initialisation_matches_reference():
  config = ModelConfig(
    image_size=64,
    patch_size=8,
    width=256,
    depth=2,
    heads=8,
    decoder_width=128,
    decoder_depth=1,
    decoder_heads=4,
  )
  params = init_params(config, seed=3)
  d, dd, patch_dim = config.width, config.decoder_width, config.patch_dim
  enc, dec = params["encoder"], params["decoder"]
  assert_xavier_uniform(enc["patch_embed"]["kernel"], patch_dim, d, "patch_embed")
  for stack, width in ((enc, d), (dec, dd)):
    for layer_name, block in stack["blocks"].items():
      # The fused qkv Linear is (3D, D): bound sqrt(6 / 4D).
      assert_xavier_uniform(block["attn"]["qkv"]["kernel"], width, 3 * width, f"{layer_name}/qkv")
      assert_xavier_uniform(block["attn"]["out"]["kernel"], width, width, f"{layer_name}/out")
      assert_xavier_uniform(block["mlp"]["fc1"]["kernel"], width, 4 * width, f"{layer_name}/fc1")
      assert_xavier_uniform(block["mlp"]["fc2"]["kernel"], 4 * width, width, f"{layer_name}/fc2")
  assert_xavier_uniform(dec["embed"]["kernel"], d, dd, "decoder/embed")
  assert_xavier_uniform(dec["pred"]["kernel"], dd, patch_dim, "decoder/pred")
  for token in (enc["cls_token"], dec["mask_token"]):
    values = np.asarray(token).ravel()
    np.testing.assert_allclose(values.std(), 0.02, rtol=0.2)
    assert np.abs(values).max() < 0.02 * 6
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path)
    if name.endswith("['bias']"):
      assert not np.asarray(leaf).any(), f"{name} is not zero"
    if name.endswith("['scale']"):
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)


# --- sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,total,encoder",
  [("B/16", 111_655_680, 85_647_360), ("L/16", 329_239_296, None), ("H/14", 656_613_964, None)],
)
def test_preset_parameter_counts(name, total, encoder):
  # Scanned layers trace one block per stack: same counts, faster.
  config = preset(name, scan_layers=True)
  images = jax.ShapeDtypeStruct(
    (1, config.image_size, config.image_size, config.channels), jnp.float32
  )
  shapes = jax.eval_shape(
    lambda x: MaskedAutoencoder(config).init(
      {"params": jax.random.key(0), "masking": jax.random.key(1)}, x
    ),
    images,
  )
  params = nn.unbox(shapes["params"])
  assert count(params) == total
  if encoder is not None:
    assert count(params["encoder"]) == encoder


@pytest.mark.parametrize(
  "changes,field",
  [
    (dict(image_size=225), "image_size"),
    (dict(mask_ratio=1.0), "mask_ratio"),
    (dict(mask_ratio=-0.1), "mask_ratio"),
    (dict(image_size=32, patch_size=16, mask_ratio=0.9), "mask_ratio"),  # 4 patches, keeps 0
    (dict(heads=5), "heads"),
    (dict(decoder_heads=7), "decoder_heads"),
  ],
)
def test_bad_config_fails_at_construction(changes, field):
  config = ModelConfig(
    **dict(dict(width=64, heads=4, decoder_width=32, decoder_heads=4), **changes)
  )
  with pytest.raises(ValueError, match=rf"model\.{field}"):
    MaskedAutoencoder(config)
  with pytest.raises(ValueError, match=rf"model\.{field}"):
    preset("B/16", **dict(dict(width=64, heads=4, decoder_width=32, decoder_heads=4), **changes))


def test_unknown_preset():
  with pytest.raises(ValueError, match=r"preset 'B/15' is unknown"):
    preset("B/15")


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 3, 32, 32), (2, 64, 64, 3), (32, 32, 3)])
def test_wrong_image_shape(shape):
  params = init_params(TINY)
  with pytest.raises(ValueError, match=r"model\.image_size, model\.channels"):
    MaskedAutoencoder(TINY).apply(
      {"params": params}, jnp.zeros(shape), rngs={"masking": jax.random.key(0)}
    )


# --- numerics and memory switches -----------------------------------------------------


def loss_and_grads(config: ModelConfig, params, images):
  return jitted_loss_and_grads(config)(params, images)


def test_bfloat16_activations_give_a_close_loss():
  params, images = init_params(TINY), random_images(TINY)
  loss32, _ = loss_and_grads(TINY, params, images)
  loss16, grads16 = loss_and_grads(TINY.replace(dtype="bfloat16"), params, images)
  assert loss16.dtype == jnp.float32
  np.testing.assert_allclose(float(loss16), float(loss32), rtol=2e-2)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads16))


@pytest.mark.parametrize(
  "remat_policy,scan",
  [("full", False), ("dots", False), ("dots_no_batch", False), ("none", True), ("dots", True)],
)
def test_remat_and_scan_change_nothing(remat_policy, scan):
  params, images = init_params(TINY), random_images(TINY)
  plain_loss, plain_grads = loss_and_grads(TINY, params, images)
  config = TINY.replace(remat_policy=remat_policy, scan_layers=scan)
  loss, grads = loss_and_grads(config, stack_layers(params) if scan else params, images)
  if scan:
    grads = unstack_layers(grads)
  np.testing.assert_allclose(float(loss), float(plain_loss), rtol=1e-6)
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)
  ):
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
