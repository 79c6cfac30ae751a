"""Fine-tuning augmentations: Mixup / CutMix targets and random erasing's
noise (on the device), RandAugment and the erasing boxes (Pillow and numpy,
in the input pipeline)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from mae_jax import data
from mae_jax.data import randaugment, transforms
from mae_jax.evaluate.erasing import erase
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


def timm_erasing_box(rng, height, width, probability):
  """timm's RandomErasing(mode="pixel", max_count=1) box, written from its
  description (10 tries, area 0.02-1/3 of the image, log-uniform aspect
  0.3-1/0.3, strictly inside); None when it erases nothing."""
  if rng.uniform() >= probability:
    return None
  for _ in range(10):
    area = height * width * rng.uniform(0.02, 1 / 3)
    aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
    h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    if h < height and w < width:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return None


def test_random_erasing_boxes_are_timms():
  erased = 0
  for seed in range(200):
    box = randaugment.random_erasing_box(np.random.default_rng(seed), 20, 24, probability=0.25)
    expected = timm_erasing_box(np.random.default_rng(seed), 20, 24, 0.25)
    assert box.dtype == np.int32 and box.shape == (4,)
    if expected is None:
      np.testing.assert_array_equal(box, 0)
    else:
      erased += 1
      np.testing.assert_array_equal(box, expected)
      top, left, h, w = expected
      assert top + h <= 20 and left + w <= 24
  assert 30 < erased < 70  # About a quarter of 200.
  none = randaugment.random_erasing_box(np.random.default_rng(0), 20, 20, probability=0.0)
  np.testing.assert_array_equal(none, 0)


def test_erase_fills_exactly_the_boxes_with_unit_normal_noise():
  images = jnp.full((3, 20, 24, 2), 7.0, jnp.float32)
  boxes = jnp.asarray([[2, 3, 10, 12], [0, 0, 0, 0], [5, 0, 15, 24]], jnp.int32)
  out = np.asarray(jax.jit(erase)(jax.random.key(0), images, boxes))
  changed = out != 7.0
  expected = np.zeros(out.shape, bool)
  expected[0, 2:12, 3:15] = True
  expected[2, 5:20, 0:24] = True
  np.testing.assert_array_equal(changed, expected)
  noise = out[expected]
  assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1
  # The same key draws the same noise (a resumed run erases the same).
  np.testing.assert_array_equal(out, np.asarray(erase(jax.random.key(0), images, boxes)))


def test_finetune_extras_plug_into_the_train_transform():
  config = data.default_data_config(image_size=12, randaugment_ops=2, random_erasing=0.25)
  image = np.random.default_rng(2).integers(0, 256, (8, 8, 1)).astype(np.uint8)
  out = transforms.train_transform(image, np.random.default_rng(5), config)
  assert out.shape == (12, 12, 1) and out.dtype == np.uint8
  # The pipeline ships one erasing box per example beside the uint8 image.
  batch = next(
    data.make_iterator(
      config,
      split="train",
      global_batch_size=16,
      train=True,
      seed=0,
      process_index=0,
      process_count=1,
    )
  )
  assert batch["image"].dtype == np.uint8
  assert batch["erase_box"].shape == (16, 4) and batch["erase_box"].dtype == np.int32
  assert 0 < (batch["erase_box"][:, 2] > 0).sum() < 16
  plain = data.default_data_config(image_size=12)
  assert "erase_box" not in next(
    data.make_iterator(
      plain,
      split="train",
      global_batch_size=16,
      train=True,
      seed=0,
      process_index=0,
      process_count=1,
    )
  )
  with pytest.raises(ValueError, match="randaugment_ops"):
    data.validate_data_config(data.default_data_config(randaugment_ops=-1))
