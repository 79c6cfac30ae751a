"""Fine-tuning augmentations: Mixup / CutMix targets (on the device) and
RandAugment / random erasing (Pillow and numpy, in the input pipeline)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from mae_jax import data
from mae_jax.data import randaugment, transforms
from mae_jax.evaluate.mixup import mix_batch


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_and_cutmix_keep_label_mass_one(mixup, cutmix):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(8, 12, 12, 1)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=8))
  for seed in range(6):
    mixed, targets = mix_batch(
      jax.random.key(seed),
      images,
      labels,
      num_classes=10,
      mixup_alpha=mixup,
      cutmix_alpha=cutmix,
      switch_prob=0.5,
      smoothing=0.1,
    )
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    assert mixed.shape == images.shape and (targets >= 0).all()
    # Each target is lam * own + (1 - lam) * partner's (reversed batch).
    lam = float(targets[0, labels[0]] - 0.01) / 0.9 if labels[0] != labels[-1] else None
    if cutmix and not mixup and lam is not None:
      # CutMix: lam is exactly the fraction of image 0 that was kept.
      kept = np.mean(np.asarray(mixed[0]) == np.asarray(images[0]))
      assert abs(kept - lam) < 1e-5


def test_no_mixing_gives_smoothed_one_hot():
  labels = jnp.asarray([3, 1])
  images = jnp.zeros((2, 4, 4, 1))
  mixed, targets = mix_batch(
    jax.random.key(0),
    images,
    labels,
    num_classes=4,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
    switch_prob=0.5,
    smoothing=0.1,
  )
  np.testing.assert_allclose(targets[0], [0.025, 0.025, 0.025, 0.925], rtol=1e-6)
  assert mixed is images


def test_randaugment_is_deterministic_in_range_and_changes_images():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)

  def augmented(seed):
    return randaugment.rand_augment(
      image,
      np.random.default_rng(seed),
      num_ops=2,
      magnitude=9.0,
      magnitude_std=0.5,
      fill=(128,) * 3,
    )

  outs = [augmented(seed) for seed in range(12)]
  np.testing.assert_array_equal(outs[0], augmented(0))
  assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in outs)
  assert sum(not np.array_equal(o, image) for o in outs) >= 6


# The magnitude's noise is clipped to [0, MAX_MAGNITUDE], so both ends occur
# in a long run (at 9 +- 0.5, the maximum about 2 % of the time).
@pytest.mark.parametrize("magnitude", [0.0, 9.0, randaugment.MAX_MAGNITUDE])
@pytest.mark.parametrize("operation", randaugment.OPERATIONS, ids=lambda op: op.__name__)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_operation_keeps_shape_and_mode(operation, channels, magnitude):
  pixels = np.random.default_rng(1).integers(0, 256, (12, 10, channels)).astype(np.uint8)
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  fill = 128 if channels == 1 else (128,) * 3
  out = operation(image, magnitude, -1.0, fill)
  assert out.size == image.size and out.mode == image.mode


def test_posterize_keeps_4_to_0_bits():
  pixels = np.random.default_rng(2).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  image = Image.fromarray(pixels)
  kept = lambda magnitude: np.asarray(randaugment.posterize(image, magnitude, 1.0, 0))
  np.testing.assert_array_equal(kept(0.0), pixels & 0xF0)
  np.testing.assert_array_equal(kept(5.0), pixels & 0xC0)
  # No bits left: every value masked to 0 (Pillow >= 10 refuses bits=0).
  np.testing.assert_array_equal(kept(randaugment.MAX_MAGNITUDE), np.zeros_like(pixels))


def test_equalize_is_pils():
  pixels = np.random.default_rng(1).integers(0, 200, (16, 16)).astype(np.uint8)
  expected = np.asarray(ImageOps.equalize(Image.fromarray(pixels)))
  ours = randaugment.equalize(Image.fromarray(pixels), 0, 0, 0)
  np.testing.assert_array_equal(np.asarray(ours), expected)


def test_random_erasing_fills_one_rectangle_with_noise():
  image = np.full([20, 20, 1], 7.0, np.float32)
  untouched = randaugment.random_erasing(image, np.random.default_rng(1), probability=0.0)
  np.testing.assert_array_equal(untouched, image)
  erased = randaugment.random_erasing(image, np.random.default_rng(1), probability=1.0)
  rows, cols = np.nonzero(erased[..., 0] != 7.0)
  area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
  assert len(rows) == area and 0.02 * 400 * 0.5 <= area <= 400 / 3 * 1.5
  assert (image == 7.0).all()  # The input is not changed in place.


def test_finetune_extras_plug_into_the_train_transform():
  config = data.default_data_config(image_size=12, randaugment_ops=2, random_erasing=0.25)
  image = np.random.default_rng(2).integers(0, 256, (8, 8, 1)).astype(np.uint8)
  out = transforms.train_transform(image, np.random.default_rng(5), config)
  assert out.shape == (12, 12, 1) and out.dtype == np.float32
  with pytest.raises(ValueError, match="randaugment_ops"):
    data.validate_data_config(data.default_data_config(randaugment_ops=-1))
