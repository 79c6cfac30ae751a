"""Tests of the input pipeline (mae_jax.data). CPU only, no network.

Every data_dir is a tmp dir; the digits are built once per session by the
`digits_data_dir` fixture (conftest.py).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from mae_jax import data
from mae_jax.data import augment, digits

# First labels of the digits test split. The split comes from numpy's frozen
# legacy RandomState, so these never change; if they do, the split did.
FIRST_TEST_LABELS = [2, 8, 2, 6, 6, 7, 1, 9, 8, 5, 2, 8]


def digits_config(data_dir, **overrides):
  return data.default_data_config(data_dir=data_dir, **overrides)


def batches(config, n=None, **kwargs):
  """The first n batches (all when n is None) as a list of numpy dicts."""
  kwargs.setdefault("seed", 0)
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  return list(itertools.islice(data.make_iterator(config, **kwargs), n))


def raw_digits(data_dir, split):
  """(uint8 images [N, 8, 8, 1], labels [N]) in stored order."""
  builder = digits.load_builder(data_dir)
  examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
  return (np.stack([e["image"] for e in examples]), np.array([e["label"] for e in examples]))


def real_examples(batch_list):
  """Concatenated (images, labels) of the examples with mask 1."""
  images = np.concatenate([b["image"][b["mask"] == 1] for b in batch_list])
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in batch_list])
  return images, labels


def as_keys(images):
  return sorted(image.tobytes() for image in images)


# ---------------------------------------------------------------- digits --


def test_digits_build_and_fixed_split(digits_data_dir, tmp_path):
  sizes, num_classes = data.dataset_info(digits_config(digits_data_dir))
  assert sizes == {"train": 1497, "test": 300}
  assert num_classes == 10
  train_images, train_labels = raw_digits(digits_data_dir, "train")
  test_images, test_labels = raw_digits(digits_data_dir, "test")
  assert train_images.shape == (1497, 8, 8, 1)
  assert train_images.dtype == np.uint8 and train_images.max() == 255
  assert set(train_labels) == set(test_labels) == set(range(10))
  assert test_labels[: len(FIRST_TEST_LABELS)].tolist() == FIRST_TEST_LABELS
  # A rebuild elsewhere gives the very same splits, in the same order.
  rebuilt_images, rebuilt_labels = raw_digits(str(tmp_path), "test")
  np.testing.assert_array_equal(rebuilt_images, test_images)
  np.testing.assert_array_equal(rebuilt_labels, test_labels)


def test_digits_mean_std_constants_match_train_split(digits_data_dir):
  images, _ = raw_digits(digits_data_dir, "train")
  pixels = images / 255.0
  assert digits.MEAN[0] == pytest.approx(pixels.mean(), abs=1e-4)
  assert digits.STD[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_concurrent_digits_builds_do_not_collide(tmp_path):
  # Two builders racing on one data_dir: the file lock makes the second wait
  # and reuse the first one's build. (flock also excludes threads, as each
  # opens its own file description, so threads stand in for processes.)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    builders = list(pool.map(digits.load_builder, [str(tmp_path)] * 2))
  for builder in builders:
    assert builder.is_prepared()
    assert builder.info.splits["test"].num_examples == 300
  assert not [f for f in os.listdir(os.path.dirname(builders[0].data_dir)) if "incomplete" in f]


# ------------------------------------------------------------- batches --


def test_train_batch_shapes_dtypes_and_mask(digits_data_dir):
  config = digits_config(digits_data_dir)
  (batch,) = batches(config, 1, split="train", global_batch_size=32, train=True)
  assert batch["image"].shape == (32, 32, 32, 1)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert batch["mask"].dtype == np.float32 and (batch["mask"] == 1).all()
  assert set(batch["label"]) <= set(range(10))
  assert np.isfinite(batch["image"]).all()
  # Normalised with the digits statistics: roughly centred and unit scale.
  assert abs(batch["image"].mean()) < 0.5
  assert 0.5 < batch["image"].std() < 1.5


def test_eval_is_exact_normalisation_in_order(digits_data_dir):
  # At image_size 8 the eval resize is the identity, so the output must be
  # exactly (pixel / 255 - mean) / std of the stored images, in order.
  config = digits_config(digits_data_dir, image_size=8)
  images, labels = real_examples(batches(config, split="test", global_batch_size=64, train=False))
  raw_images, raw_labels = raw_digits(digits_data_dir, "test")
  expected = (raw_images / 255.0 - digits.MEAN[0]) / digits.STD[0]
  np.testing.assert_allclose(images, expected, atol=1e-4)
  np.testing.assert_array_equal(labels, raw_labels)


def test_eval_pads_last_batch_and_covers_every_example_once(digits_data_dir):
  config = digits_config(digits_data_dir, image_size=8)
  eval_batches = batches(config, split="test", global_batch_size=64, train=False)
  assert len(eval_batches) == 5  # 300 = 4 * 64 + 44
  for batch in eval_batches:
    assert batch["image"].shape == (64, 8, 8, 1)
    assert batch["mask"].shape == (64,)
  last = eval_batches[-1]
  np.testing.assert_array_equal(last["mask"], [1.0] * 44 + [0.0] * 20)
  assert (last["image"][44:] == 0).all()
  assert sum(b["mask"].sum() for b in eval_batches) == 300


def test_same_seed_same_batches_different_seed_different(digits_data_dir):
  config = digits_config(digits_data_dir)
  kwargs = dict(split="train", global_batch_size=64, train=True)
  first = batches(config, 3, seed=7, **kwargs)
  again = batches(config, 3, seed=7, **kwargs)
  other = batches(config, 3, seed=8, **kwargs)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_cache_does_not_change_the_stream(digits_data_dir):
  kwargs = dict(split="train", global_batch_size=64, train=True, seed=3)
  cached = batches(digits_config(digits_data_dir, cache=True), 2, **kwargs)
  uncached = batches(digits_config(digits_data_dir, cache=False), 2, **kwargs)
  for a, b in zip(cached, uncached):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_start_step_replays_the_uninterrupted_stream(digits_data_dir):
  # 100 per batch: batch 16 starts in the second epoch (1497 examples).
  config = digits_config(digits_data_dir)
  kwargs = dict(split="train", global_batch_size=100, train=True, seed=5)
  uninterrupted = batches(config, 18, **kwargs)
  resumed = batches(config, 2, start_step=16, **kwargs)
  for expected, got in zip(uninterrupted[16:], resumed):
    np.testing.assert_array_equal(expected["image"], got["image"])
    np.testing.assert_array_equal(expected["label"], got["label"])


def test_epochs_are_reshuffled(digits_data_dir):
  # 1497 = 3 * 499: batches 0 and 3 both start an epoch.
  config = digits_config(digits_data_dir)
  first_epoch, _, _, second_epoch = batches(
    config, 4, split="train", global_batch_size=499, train=True
  )
  assert not np.array_equal(first_epoch["label"], second_epoch["label"])


def test_two_processes_read_disjoint_halves(digits_data_dir):
  config = digits_config(digits_data_dir, image_size=8)
  kwargs = dict(split="train", global_batch_size=64, train=False, process_count=2)
  host_batches = [batches(config, process_index=i, **kwargs) for i in (0, 1)]
  (images0, _), (images1, _) = [real_examples(b) for b in host_batches]
  # 1497 examples: 749 + 748, yet the same number of (padded) batches.
  assert (len(images0), len(images1)) == (749, 748)
  assert len(host_batches[0]) == len(host_batches[1]) == 24
  assert host_batches[0][0]["image"].shape[0] == 32
  everything, _ = real_examples(batches(config, split="train", global_batch_size=64, train=False))
  assert as_keys(np.concatenate([images0, images1])) == as_keys(everything)
  # Training draws from the host's own half only.
  train_config = digits_config(digits_data_dir, image_size=8, random_resized_crop=False)
  (train_batch,) = batches(train_config, 1, process_index=1, seed=0, **{**kwargs, "train": True})
  assert set(as_keys(train_batch["image"])) <= set(as_keys(images1))


def test_default_processes_come_from_jax(digits_data_dir):
  config = digits_config(digits_data_dir)
  dataset = data.make_dataset(config, split="test", global_batch_size=16, train=False, seed=0)
  assert dataset.element_spec["image"].shape == (16, 32, 32, 1)


def test_rgb_digits(digits_data_dir):
  config = digits_config(
    digits_data_dir, channels=3, mean=(0.3,) * 3, std=(0.4,) * 3, image_size=16
  )
  (batch,) = batches(config, 1, split="train", global_batch_size=8, train=True)
  assert batch["image"].shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


# ------------------------------------------------------------- augment --


def half_bright_image(height=20, width=30, channels=1):
  """Left half white, right half black: mirrored, the right half is bright."""
  image = np.zeros([height, width, channels], np.uint8)
  image[:, : width // 2] = 255
  return tf.constant(image)


def test_flip_off_never_mirrors_and_flip_on_does():
  def left_brighter_count(horizontal_flip):
    config = data.default_data_config(
      image_size=12,
      random_resized_crop=False,
      horizontal_flip=horizontal_flip,
      mean=(0.0,),
      std=(1.0,),
    )
    count = 0
    for i in range(20):
      out = augment.train_transform(half_bright_image(), tf.constant([i, 0]), config).numpy()
      count += out[:, :6].mean() > out[:, 6:].mean()
    return count

  assert left_brighter_count(horizontal_flip=False) == 20
  assert 0 < left_brighter_count(horizontal_flip=True) < 20


def test_random_resized_crop_output_size_and_range():
  image = tf.constant(np.random.RandomState(0).randint(0, 256, size=(37, 53, 3)).astype(np.uint8))
  for i in range(10):
    out = augment.random_resized_crop(
      image, tf.constant([i, 1]), size=24, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
    )
    assert out.shape == (24, 24, 3) and out.dtype == tf.float32
    assert 0 <= out.numpy().min() and out.numpy().max() <= 255
  # Different seeds give different crops; the same seed the same crop.
  crop = lambda s: augment.random_resized_crop(
    image, tf.constant(s), size=24, scale=(0.2, 1.0), ratio=(0.75, 1.33)
  )
  np.testing.assert_array_equal(crop([3, 4]), crop([3, 4]))
  assert not np.array_equal(crop([3, 4]), crop([3, 5]))


def test_random_resized_crop_fallback_when_no_draw_fits():
  # A 10x100 strip cannot hold a square covering >= 90% of its area: after
  # the draws, torchvision falls back to the centered 10x10 square.
  image = np.zeros([10, 100, 1], np.uint8)
  image[:, 45:55] = 200  # The center square.
  out = augment.random_resized_crop(
    tf.constant(image), tf.constant([0, 0]), size=10, scale=(0.9, 1.0), ratio=(1.0, 1.0)
  )
  np.testing.assert_allclose(out.numpy(), 200, atol=1e-3)


def test_eval_transform_resizes_short_side_and_center_crops():
  image = np.zeros([40, 60, 1], np.uint8)
  image[:, 24:36] = 255  # A centered vertical band, 12 of 60 columns wide.
  config = data.default_data_config(image_size=10, eval_crop_fraction=0.5, mean=(0.0,), std=(1.0,))
  out = augment.eval_transform(tf.constant(image), config).numpy()
  # 40x60 -> short side 10 / 0.5 = 20 -> 20x30 (band: columns 12..18)
  # -> center 10x10 crop (columns 10..20): the band fills columns 2..8.
  # A plain 10x10 resize would leave a band only 2 columns wide.
  assert out.shape == (10, 10, 1)
  assert out[:, 3:7].min() > 0.99
  assert out[:, 0].max() < 0.01 and out[:, 9].max() < 0.01


def test_channel_conversion():
  rgb = tf.constant([[[255, 0, 0], [0, 0, 255]]], tf.uint8)
  gray = augment.match_channels(rgb, 1)
  assert gray.shape == (1, 2, 1) and gray.dtype == tf.uint8
  # ITU-R 601 luma: red weighs more than blue.
  assert gray.numpy()[0, 0, 0] > gray.numpy()[0, 1, 0] > 0
  tiled = augment.match_channels(gray, 3).numpy()
  assert tiled.shape == (1, 2, 3) and (tiled == tiled[..., :1]).all()
  assert augment.match_channels(rgb, 3) is rgb


# ------------------------------------------------------- other sources --


def make_image_folder(root, splits=("train", "test"), per_class=3):
  """root/<split>/<class>/*.png|jpg: grayscale PNGs and RGB JPEGs of
  different sizes, so decoding and channel conversion are exercised."""
  rng = np.random.RandomState(0)
  for split in splits:
    for class_name in ("cat", "dog"):
      folder = root / split / class_name
      folder.mkdir(parents=True)
      for i in range(per_class):
        if i % 2:
          pixels = rng.randint(0, 256, size=(20 + i, 24, 3)).astype(np.uint8)
          Image.fromarray(pixels, "RGB").save(folder / f"{i}.jpg")
        else:
          pixels = rng.randint(0, 256, size=(18, 16 + i)).astype(np.uint8)
          Image.fromarray(pixels, "L").save(folder / f"{i}.png")
  return root


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_source(tmp_path, channels):
  root = make_image_folder(tmp_path / "images")
  config = data.default_data_config(
    source="image_folder",
    data_dir=str(root),
    image_size=16,
    channels=channels,
    mean=(0.5,) * channels,
    std=(0.25,) * channels,
  )
  data.validate_data_config(config)
  assert data.dataset_info(config) == ({"train": 6, "test": 6}, 2)
  (batch,) = batches(config, 1, split="train", global_batch_size=4, train=True)
  assert batch["image"].shape == (4, 16, 16, channels)
  assert set(batch["label"]) <= {0, 1}
  eval_batches = batches(config, split="test", global_batch_size=4, train=False)
  assert [b["mask"].sum() for b in eval_batches] == [4, 2]
  # Hosts split the files between them.
  host_counts = [
    sum(
      b["mask"].sum()
      for b in batches(
        config, split="test", global_batch_size=4, train=False, process_index=i, process_count=2
      )
    )
    for i in (0, 1)
  ]
  assert host_counts == [3, 3]


def write_fake_tfds_metadata(data_dir, name, num_examples):
  """Writes the metadata of a prepared `name` with `num_examples` per split,
  which `tfds.testing.mock_data(policy=USE_FILES)` then serves random data
  for (the real files are never needed)."""
  builder = tfds.builder(name, data_dir=data_dir)
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
        for split in ("train", "test")
      ]
    )
  )
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


def test_tfds_source_with_mock_data(tmp_path):
  write_fake_tfds_metadata(str(tmp_path), "mnist", num_examples=10)
  config = data.default_data_config(
    source="tfds", name="mnist", data_dir=str(tmp_path), image_size=16
  )
  with tfds.testing.mock_data(
    num_examples=10, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
  ):
    data.validate_data_config(config)
    assert data.dataset_info(config) == ({"train": 10, "test": 10}, 10)
    train_batches = batches(config, 4, split="train", global_batch_size=4, train=True)
    assert train_batches[-1]["image"].shape == (4, 16, 16, 1)
    eval_batches = batches(config, split="test", global_batch_size=4, train=False)
    assert [b["mask"].sum() for b in eval_batches] == [4, 4, 2]


# ---------------------------------------------------------- bad configs --


@pytest.mark.parametrize(
  "overrides, field",
  [
    (dict(source="nope"), "source"),
    (dict(image_size=0), "image_size"),
    (dict(channels=2), "channels"),
    (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_scale=(0.2, 1.5)), "crop_scale"),
    (dict(crop_ratio=(4 / 3, 3 / 4)), "crop_ratio"),
    (dict(mean=(0.5, 0.5)), "mean"),
    (dict(channels=3), "mean"),
    (dict(std=(0.0,)), "std"),
    (dict(eval_crop_fraction=1.5), "eval_crop_fraction"),
    (dict(shuffle_buffer=0), "shuffle_buffer"),
    (dict(eval_split="validation"), "eval_split"),
    (dict(source="tfds"), "name"),
  ],
)
def test_bad_field_raises_naming_it(digits_data_dir, overrides, field):
  config = digits_config(digits_data_dir, **overrides)
  with pytest.raises(data.DataConfigError, match=field):
    data.validate_data_config(config)


def test_missing_tfds_dataset(tmp_path):
  unknown = data.default_data_config(
    source="tfds", name="no_such_dataset_xyz", data_dir=str(tmp_path)
  )
  with pytest.raises(ValueError, match="data.name='no_such_dataset_xyz'"):
    data.validate_data_config(unknown)
  # Registered in code but never built into this data_dir: no download.
  unprepared = data.default_data_config(source="tfds", name="mnist", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="not prepared.*tfds build mnist"):
    data.validate_data_config(unprepared)
  assert not (tmp_path / "mnist").exists()


def image_folder_config(root, **overrides):
  return data.default_data_config(source="image_folder", data_dir=str(root), **overrides)


def test_bad_image_folders(tmp_path):
  with pytest.raises(ValueError, match="data_dir.*does not exist"):
    data.validate_data_config(image_folder_config(tmp_path / "missing"))
  with pytest.raises(ValueError, match="data_dir"):
    data.validate_data_config(image_folder_config(None))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="train_split='train'"):
    data.validate_data_config(image_folder_config(tmp_path / "empty"))
  no_images = tmp_path / "no_images" / "train" / "cat"
  no_images.mkdir(parents=True)
  with pytest.raises(ValueError, match="train_split='train'.*no examples"):
    data.validate_data_config(image_folder_config(tmp_path / "no_images"), splits=["train"])
  root = make_image_folder(tmp_path / "train_only", splits=("train",))
  with pytest.raises(ValueError, match="eval_split='test'"):
    data.validate_data_config(image_folder_config(root))
  with pytest.raises(ValueError, match="split='train\\[:50%\\]'"):
    data.validate_data_config(image_folder_config(root), splits=["train[:50%]"])


def test_bad_make_dataset_arguments(digits_data_dir):
  config = digits_config(digits_data_dir)
  common = dict(split="train", train=True, seed=0)
  with pytest.raises(ValueError, match="global_batch_size=10.*process_count=3"):
    data.make_dataset(config, global_batch_size=10, process_index=0, process_count=3, **common)
  with pytest.raises(ValueError, match="process_index"):
    data.make_dataset(config, global_batch_size=8, process_index=2, process_count=2, **common)
  with pytest.raises(ValueError, match="start_step"):
    data.make_dataset(
      config,
      global_batch_size=8,
      process_index=0,
      process_count=1,
      split="test",
      train=False,
      seed=0,
      start_step=3,
    )


def test_unknown_config_field_is_rejected():
  with pytest.raises(ValueError, match="image_sise"):
    data.default_data_config(image_sise=32)


def test_imagenet_config_fields():
  config = data.imagenet_data_config(data_dir="gs://bucket/tfds")
  assert (config.source, config.name, config.image_size) == ("tfds", "imagenet2012", 224)
  assert config.channels == 3 and tuple(config.mean) == data.IMAGENET_MEAN
  assert config.horizontal_flip and not config.cache
  assert config.eval_split == "validation"
  assert config.eval_crop_fraction == 0.875
  assert config.data_dir == "gs://bucket/tfds"


def test_on_disk_tfds_dataset_reads_back_through_tfds_load_and_the_tfds_source(digits_data_dir):
  """The digits, built as a real TFDS dataset, through the generic TFDS path."""
  import tensorflow_datasets as tfds

  from mae_jax.data import dataset_info, default_data_config, make_iterator

  loaded = tfds.load("mae_digits", split="test", data_dir=digits_data_dir, download=False)
  first_labels = [int(example["label"]) for example in loaded.take(4)]
  config = default_data_config(source="tfds", name="mae_digits", data_dir=digits_data_dir)
  assert dataset_info(config) == ({"train": 1497, "test": 300}, 10)
  batch = next(make_iterator(config, split="test", global_batch_size=8, train=False, seed=0))
  assert batch["image"].shape == (8, 32, 32, 1)
  assert list(batch["label"][:4]) == first_labels
