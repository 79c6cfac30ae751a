"""Tests of the input pipeline (mae_jax.data). CPU only, no network.

Every data_dir is a tmp dir; the TFDS copies of the digits are built once
per session (conftest.py).
"""

from __future__ import annotations

import itertools
import math
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mae_jax import data
from mae_jax.core.pixels import PixelNormalization
from mae_jax.data import convert, digits, sources, tfds_splits, transforms

# First labels of the digits test split. The split comes from numpy's frozen
# legacy RandomState, so these never change; if they do, the split did.
FIRST_TEST_LABELS = [2, 8, 2, 6, 6, 7, 1, 9, 8, 5, 2, 8]


def batches(config, n=None, **kwargs):
  """The first n batches (all when n is None) as a list of numpy dicts."""
  kwargs.setdefault("seed", 0)
  kwargs.setdefault("process_index", 0)
  kwargs.setdefault("process_count", 1)
  return list(itertools.islice(data.make_iterator(config, **kwargs), n))


def real_examples(batch_list):
  """Concatenated (images, labels) of the examples with mask 1."""
  images = np.concatenate([b["image"][b["mask"] == 1] for b in batch_list])
  labels = np.concatenate([b["label"][b["mask"] == 1] for b in batch_list])
  return images, labels


def as_keys(images):
  return sorted(image.tobytes() for image in images)


def assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def exact_config(**overrides):
  """Digits at 8x8 without crop: the output is the normalised stored image."""
  return data.default_data_config(image_size=8, random_resized_crop=False, **overrides)


# ---------------------------------------------------------------- digits --


def test_digits_fixed_split():
  sizes, num_classes = data.dataset_info(data.default_data_config())
  assert sizes == {"train": 1497, "test": 300} and num_classes == 10
  train_images, train_labels = digits.load_split("train")
  test_images, test_labels = digits.load_split("test")
  assert train_images.shape == (1497, 8, 8, 1)
  assert train_images.dtype == np.uint8 and train_images.max() == 255
  assert set(train_labels) == set(test_labels) == set(range(10))
  assert test_labels[: len(FIRST_TEST_LABELS)].tolist() == FIRST_TEST_LABELS


def test_digits_mean_std_constants_match_train_split():
  pixels = digits.load_split("train")[0] / 255.0
  assert digits.MEAN[0] == pytest.approx(pixels.mean(), abs=1e-4)
  assert digits.STD[0] == pytest.approx(pixels.std(), abs=1e-4)


# ------------------------------------------------------------- batches --


def test_train_batch_shapes_dtypes_and_mask():
  (batch,) = batches(data.default_data_config(), 1, split="train", global_batch_size=32, train=True)
  assert batch["image"].shape == (32, 32, 32, 1)
  assert batch["image"].dtype == np.uint8  # Normalised on the device.
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert batch["mask"].dtype == np.float32 and (batch["mask"] == 1).all()
  assert batch["replaced"].dtype == np.int32 and not batch["replaced"].any()
  assert set(batch["label"]) <= set(range(10))
  # Normalised with the digits statistics: roughly centred and unit scale.
  images = np.asarray(PixelNormalization.of(data.default_data_config())(batch["image"]))
  assert images.dtype == np.float32
  assert abs(images.mean()) < 0.5
  assert 0.5 < images.std() < 1.5


def test_eval_is_the_stored_pixels_in_order_and_normalises_on_device():
  # At image_size 8 the eval resize is the identity, so the pipeline must
  # ship exactly the stored uint8 images, in order, and the device-side
  # normalisation must give (pixel / 255 - mean) / std of them.
  config = data.default_data_config(image_size=8)
  images, labels = real_examples(batches(config, split="test", global_batch_size=64, train=False))
  raw_images, raw_labels = digits.load_split("test")
  assert images.dtype == np.uint8
  np.testing.assert_array_equal(images, raw_images)
  np.testing.assert_array_equal(labels, raw_labels)
  normalised = jax.jit(PixelNormalization.of(config))(images)
  expected = (raw_images / 255.0 - digits.MEAN[0]) / digits.STD[0]
  np.testing.assert_allclose(normalised, expected, atol=1e-5)


def test_eval_pads_last_batch_and_covers_every_example_once():
  config = data.default_data_config(image_size=8)
  eval_batches = batches(config, split="test", global_batch_size=64, train=False)
  assert len(eval_batches) == 5  # 300 = 4 * 64 + 44
  for batch in eval_batches:
    assert batch["image"].shape == (64, 8, 8, 1) and batch["mask"].shape == (64,)
  last = eval_batches[-1]
  np.testing.assert_array_equal(last["mask"], [1.0] * 44 + [0.0] * 20)
  assert (last["image"][44:] == 0).all()
  assert sum(b["mask"].sum() for b in eval_batches) == 300


def test_eval_hosts_load_slices_of_the_same_global_batches():
  config = data.default_data_config(image_size=8)
  kwargs = dict(split="train", global_batch_size=64, train=False, process_count=2)
  host_batches = [batches(config, process_index=i, **kwargs) for i in (0, 1)]
  # 1497 examples: 24 global batches (the last one part padding) on both.
  assert len(host_batches[0]) == len(host_batches[1]) == 24
  assert host_batches[0][0]["image"].shape[0] == 32
  whole = batches(config, split="train", global_batch_size=64, train=False)
  for one, first, second in zip(whole, *host_batches):
    for key in one:
      np.testing.assert_array_equal(one[key], np.concatenate([first[key], second[key]]))


def test_same_seed_same_batches_different_seed_different():
  config = data.default_data_config()
  kwargs = dict(split="train", global_batch_size=64, train=True)
  first = batches(config, 3, seed=7, **kwargs)
  assert_same_batches(first, batches(config, 3, seed=7, **kwargs))
  other = batches(config, 3, seed=8, **kwargs)
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_every_epoch_is_a_new_permutation_of_the_split():
  # 1497 = 3 * 499: batches 0-2 are epoch 1, batches 3-5 epoch 2.
  config = exact_config()
  six = batches(config, 6, split="train", global_batch_size=499, train=True)
  everything = as_keys(
    real_examples(batches(config, split="train", global_batch_size=499, train=False))[0]
  )
  first_epoch = as_keys(np.concatenate([b["image"] for b in six[:3]]))
  second_epoch = as_keys(np.concatenate([b["image"] for b in six[3:]]))
  assert first_epoch == everything == second_epoch
  assert not np.array_equal(six[0]["label"], six[3]["label"])


def test_start_step_continues_without_reading_what_came_before(monkeypatch):
  # 100 per batch: batch 16 starts in the second epoch (1497 examples).
  config = data.default_data_config()
  kwargs = dict(split="train", global_batch_size=100, train=True, seed=5)
  uninterrupted = batches(config, 18, **kwargs)
  reads = []
  records = sources.open_split(config, "train").records
  original = type(records).__getitem__
  monkeypatch.setattr(
    type(records), "__getitem__", lambda self, i: reads.append(i) or original(self, i)
  )
  resumed = batches(config, 2, start_step=16, **kwargs)
  assert_same_batches(uninterrupted[16:], resumed)
  # Only the examples of the batches yielded (and those prefetched) are read.
  assert len(reads) <= 100 * (2 + config.prefetch + config.read_threads)


def test_resume_cost_does_not_grow_with_the_step():
  import time

  config = data.default_data_config()
  kwargs = dict(split="train", global_batch_size=100, train=True, seed=5)
  seconds = []
  for start in (0, 10**7):  # 0 and ~670,000 epochs in
    begin = time.perf_counter()
    batches(config, 1, start_step=start, **kwargs)
    seconds.append(time.perf_counter() - begin)
  assert seconds[1] < seconds[0] + 2.0


@pytest.mark.parametrize("process_count", [2, 4])
def test_the_global_order_does_not_depend_on_the_host_count(process_count):
  """Host p of P loads rows [p * B/P, (p+1) * B/P) of each global batch,
  with the same augmentation: concatenated, the hosts give the one-host run."""
  config = data.default_data_config()
  kwargs = dict(split="train", global_batch_size=16, train=True, seed=3, start_step=90)
  one_host = batches(config, 3, **kwargs)
  per_host = [
    batches(config, 3, process_index=p, process_count=process_count, **kwargs)
    for p in range(process_count)
  ]
  for step, whole in enumerate(one_host):
    for key in whole:
      joined = np.concatenate([host[step][key] for host in per_host])
      np.testing.assert_array_equal(whole[key], joined, err_msg=key)


def test_threads_and_worker_processes_do_not_change_the_batches():
  kwargs = dict(split="train", global_batch_size=32, train=True, seed=1, start_step=40)
  reference = batches(data.default_data_config(read_threads=1, prefetch=1), 4, **kwargs)
  threaded = batches(data.default_data_config(read_threads=8), 4, **kwargs)
  workers = batches(data.default_data_config(num_workers=2), 4, **kwargs)
  assert_same_batches(reference, threaded)
  assert_same_batches(reference, workers)


def test_default_processes_come_from_jax():
  config = data.default_data_config()
  (batch,) = batches(
    config,
    1,
    split="test",
    global_batch_size=16,
    train=False,
    process_index=None,
    process_count=None,
  )
  assert batch["image"].shape == (16, 32, 32, 1)


def test_rgb_digits():
  config = data.default_data_config(channels=3, mean=(0.3,) * 3, std=(0.4,) * 3, image_size=16)
  (batch,) = batches(config, 1, split="train", global_batch_size=8, train=True)
  assert batch["image"].shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])


def test_training_imports_no_tensorflow():
  import subprocess

  code = (
    "import sys, itertools\n"
    "from mae_jax import data\n"
    "c = data.default_data_config()\n"
    "list(itertools.islice(data.make_iterator(c, split='train', global_batch_size=8,"
    " train=True, seed=0, process_index=0, process_count=1), 2))\n"
    "assert 'tensorflow' not in sys.modules\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------ transforms --


def half_bright_image(height=20, width=30):
  """Left half white, right half black: mirrored, the right half is bright."""
  image = np.zeros([height, width, 1], np.uint8)
  image[:, : width // 2] = 255
  return image


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
      out = transforms.train_transform(half_bright_image(), np.random.default_rng(i), config)
      count += out[:, :6].mean() > out[:, 6:].mean()
    return count

  assert left_brighter_count(horizontal_flip=False) == 20
  assert 0 < left_brighter_count(horizontal_flip=True) < 20


def test_crop_box_distribution_matches_the_reference():
  """Area fraction uniform in [0.2, 1] and log-ratio uniform in [log 3/4,
  log 4/3], as long as the draw fits; placement uniform."""
  rng = np.random.default_rng(0)
  height, width = 1000, 1000  # Large and square: nearly every first draw fits.
  boxes = np.array(
    [
      transforms.random_resized_crop_box(rng, height, width, (0.2, 1.0), (3 / 4, 4 / 3))
      for _ in range(4000)
    ]
  )
  top, left, crop_height, crop_width = boxes.T
  area = crop_height * crop_width / (height * width)
  log_ratio = np.log(crop_width / crop_height)
  assert area.min() >= 0.19 and area.max() <= 1.0
  assert abs(log_ratio).max() <= math.log(4 / 3) + 0.01
  # Conditioned on fitting, large areas with extreme ratios are rejected,
  # so the means sit slightly below the unconditioned 0.6 and 0.
  assert 0.52 < area.mean() < 0.6
  assert abs(log_ratio.mean()) < 0.02
  # Log-uniform: each quarter of the log-ratio range gets about a quarter.
  quarters = np.histogram(log_ratio, bins=4, range=(math.log(3 / 4), math.log(4 / 3)))[0]
  assert (abs(quarters / len(boxes) - 0.25) < 0.05).all()
  assert (top >= 0).all() and (top + crop_height <= height).all()
  assert (left + crop_width <= width).all()
  # Placement: uniform over the offsets that keep the box inside.
  for offset, room in ((top, height - crop_height), (left, width - crop_width)):
    spread = offset[room > 0] / room[room > 0]
    assert 0.45 < spread.mean() < 0.55 and spread.min() < 0.02 and spread.max() > 0.98


def test_crop_box_fallback_is_the_centred_crop_trimmed_to_the_ratio():
  # A 10x100 strip holds no box covering >= 90 % of it at ratio 3/4-4/3:
  # after ten draws, the reference falls back to the centred 10x13 box.
  rng = np.random.default_rng(0)
  box = transforms.random_resized_crop_box(rng, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3))
  assert box == ((10 - 10) // 2, (100 - 13) // 2, 10, 13)
  # A tall strip: the width is kept, the height trimmed to width / (3/4).
  assert transforms.random_resized_crop_box(rng, 100, 10, (0.9, 1.0), (3 / 4, 4 / 3)) == (
    (100 - 13) // 2,
    0,
    13,
    10,
  )
  # Square only: a 10x12 image falls back to its centred 10x10.
  assert transforms.random_resized_crop_box(rng, 10, 12, (0.99, 1.0), (1.0, 1.0)) == (0, 1, 10, 10)


def test_random_resized_crop_output_size_range_and_seed():
  image = np.random.RandomState(0).randint(0, 256, size=(37, 53, 3)).astype(np.uint8)
  config = data.default_data_config(image_size=24, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)

  def crop(seed):
    return transforms.train_transform(image, np.random.default_rng(seed), config)

  for seed in range(10):
    out = crop(seed)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(crop(3), crop(3))
  assert not np.array_equal(crop(3), crop(4))
  # Arrays (the digits) take the reference's crop too.
  for seed in range(10):
    np.testing.assert_array_equal(crop(seed), reference_crop(image, seed, config, (24, 24)))


def jpeg_bytes(height, width, seed=0, quality=95):
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, size=(height // 20 + 1, width // 20 + 1, 3))
  pixels = np.kron(coarse, np.ones((20, 20, 1)))[:height, :width].astype(np.uint8)
  import io

  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
  return buffer.getvalue()


def natural_jpegs(quality=90):
  """500x375 crops of scikit-learn's two sample photos (a temple, a flower)
  and one of them in grey, as JPEG bytes: natural content, no download."""
  import io

  from sklearn.datasets import load_sample_images

  out = []
  for photo in load_sample_images().images:
    for top, left in ((0, 0), (52, 140)):
      for mode in ("RGB", "L"):
        crop = Image.fromarray(photo[top : top + 375, left : left + 500]).convert(mode)
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=quality)
        out.append(buffer.getvalue())
  return out


def test_jpeg_decoding_gives_pillows_pixels_on_photos():
  """libjpeg-turbo through simplejpeg (accurate IDCT, smooth upsampling)
  decodes natural photos to exactly the pixels of Pillow, the reference's
  decoder; so RandomResizedCrop's output is the reference's too."""
  import io

  config = data.default_data_config(
    image_size=64, channels=3, random_resized_crop=True, horizontal_flip=True
  )
  for quality in (75, 90):
    for encoded in natural_jpegs(quality):
      reference = Image.open(io.BytesIO(encoded)).convert("RGB")
      np.testing.assert_array_equal(
        transforms.to_array(transforms.decode_image(encoded, 3)), np.asarray(reference)
      )
      rng = np.random.default_rng(quality)
      ours = transforms.train_transform(encoded, rng, config)
      # The reference pipeline, with the box and flip drawn from the same stream.
      rng = np.random.default_rng(quality)
      box = transforms.random_resized_crop_box(
        rng, reference.height, reference.width, config.crop_scale, config.crop_ratio
      )
      top, left, height, width = box
      # torchvision's F.resized_crop on a PIL image: crop, then resize.
      expected = reference.crop((left, top, left + width, top + height))
      expected = expected.resize((64, 64), Image.BICUBIC)
      if rng.uniform() < 0.5:
        expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
      np.testing.assert_array_equal(ours, np.asarray(expected))


def test_eval_transform_resizes_short_side_and_center_crops():
  image = np.zeros([40, 60, 1], np.uint8)
  image[:, 24:36] = 255  # A centred vertical band, 12 of 60 columns wide.
  config = data.default_data_config(image_size=10, eval_crop_fraction=0.5, mean=(0.0,), std=(1.0,))
  out = transforms.eval_transform(image, config)
  # 40x60 -> short side 10 / 0.5 = 20 -> 20x30 (band: columns 12..18)
  # -> centre 10x10 crop (columns 10..20): the band fills columns 2..8.
  assert out.shape == (10, 10, 1)
  assert out.dtype == np.uint8
  assert out[:, 3:7].min() > 252
  assert out[:, 0].max() < 3 and out[:, 9].max() < 3
  # The reference's size rule: int(224 / 0.875) = 256 on the short side.
  assert transforms.eval_resize_shape(375, 500, 224, 0.875) == (256, 341)
  assert transforms.eval_resize_shape(500, 375, 224, 0.875) == (341, 256)


def test_device_normalisation_matches_the_formula_and_the_host_arithmetic():
  pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 7, 3)).astype(np.uint8)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  normalise = PixelNormalization(mean, std)
  out = np.asarray(jax.jit(normalise)(pixels))
  assert out.dtype == np.float32
  expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # The float32 multiply-add the host pipeline ran before images went uint8:
  # the same numbers, to float32 rounding.
  std32 = np.asarray(std, np.float32)
  host = pixels.astype(np.float32) * (1 / (255 * std32)) + (-np.asarray(mean, np.float32) / std32)
  np.testing.assert_allclose(out, host, rtol=1e-6, atol=1e-6)
  # Already-normalised float images pass through.
  assert normalise(jax.numpy.asarray(expected, np.float32)).dtype == np.float32
  np.testing.assert_array_equal(normalise(np.float32(expected)), np.float32(expected))


def test_channel_conversion():
  rgb = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)
  gray = transforms.match_channels(rgb, 1)
  assert gray.shape == (1, 2, 1) and gray.dtype == np.uint8
  # ITU-R 601 luma: red weighs more than blue.
  assert gray[0, 0, 0] > gray[0, 1, 0] > 0
  tiled = transforms.match_channels(gray, 3)
  assert tiled.shape == (1, 2, 3) and (tiled == tiled[..., :1]).all()
  assert transforms.match_channels(rgb, 3) is rgb


# ------------------------------------------------------- other sources --


def make_image_folder(root, splits=("train", "test"), per_class=3):
  """root/<split>/<class>/*.png|jpg: grayscale PNGs and RGB JPEGs of
  different sizes, plus stray files and folders that must be ignored."""
  rng = np.random.RandomState(0)
  for split in splits:
    (root / split).mkdir(parents=True)
    (root / split / "README.txt").write_text("not a class")
    for class_name in ("cat", "dog"):
      folder = root / split / class_name
      folder.mkdir()
      (folder / "notes.txt").write_text("not an image")
      (folder / "nested").mkdir()
      Image.new("L", (4, 4)).save(folder / "nested" / "deeper.png")
      for i in range(per_class):
        if i % 2:
          pixels = rng.randint(0, 256, size=(20 + i, 24, 3)).astype(np.uint8)
          Image.fromarray(pixels, "RGB").save(folder / f"{i}.JPG")
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
  assert real_examples(eval_batches)[1].tolist() == [0, 0, 0, 1, 1, 1]
  host_counts = [
    sum(
      b["mask"].sum()
      for b in batches(
        config, split="test", global_batch_size=4, train=False, process_index=i, process_count=2
      )
    )
    for i in (0, 1)
  ]
  assert host_counts == [4, 2]  # Rows 0-1 and 2-3 of each global batch.


def test_tfds_array_record_source_through_data_source(array_record_digits_dir):
  config = data.default_data_config(
    source="tfds", name="mae_digits", data_dir=array_record_digits_dir
  )
  assert data.dataset_info(config) == ({"train": 1497, "test": 300}, 10)
  eval_batches = batches(config, split="test", global_batch_size=64, train=False)
  images, labels = real_examples(eval_batches)
  assert labels[: len(FIRST_TEST_LABELS)].tolist() == FIRST_TEST_LABELS
  # The same pixels as the in-memory digits (PNG round trip is lossless).
  in_memory = real_examples(
    batches(data.default_data_config(), split="test", global_batch_size=64, train=False)
  )[0]
  np.testing.assert_array_equal(images, in_memory)
  sub = data.default_data_config(
    source="tfds", name="mae_digits", data_dir=array_record_digits_dir, train_split="train[:10%]"
  )
  assert data.dataset_info(sub)[0]["train[:10%]"] == 150
  (batch,) = batches(sub, 1, split="train[:10%]", global_batch_size=8, train=True)
  assert batch["image"].shape == (8, 32, 32, 1)


def test_tfrecord_only_copy_is_refused_with_the_conversion_command(tfrecord_digits_dir, tmp_path):
  import shutil

  copy = tmp_path / "tfds"
  shutil.copytree(tfrecord_digits_dir, copy)
  config = data.default_data_config(source="tfds", name="mae_digits", data_dir=str(copy))
  version_dir = os.path.join(str(copy), "mae_digits", "1.0.0")
  with pytest.raises(data.DataConfigError, match="python -m mae_jax.data.convert " + version_dir):
    data.validate_data_config(config)
  # Convert, interrupt (one shard lost, a partial file left), convert again.
  assert convert.main(["convert", version_dir]) == 0
  shards = sorted(f for f in os.listdir(version_dir) if ".array_record-" in f)
  assert len(shards) == 2
  os.remove(os.path.join(version_dir, shards[0]))
  with open(os.path.join(version_dir, shards[0] + ".incomplete"), "wb") as partial:
    partial.write(b"half")
  assert convert.convert_dataset_dir(version_dir, progress=False) == 1
  tfds_splits.tfds_builder.cache_clear()
  sources._open_split.cache_clear()
  data.validate_data_config(config)
  labels = real_examples(batches(config, split="test", global_batch_size=64, train=False))[1]
  assert labels[: len(FIRST_TEST_LABELS)].tolist() == FIRST_TEST_LABELS
  assert convert.main(["convert", str(tmp_path / "nope")]) == 2


def test_ctrl_c_during_a_conversion_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
  (tmp_path / "dataset_info.json").write_text("{}")

  def interrupted(dataset_dir):
    raise KeyboardInterrupt

  monkeypatch.setattr(convert, "convert_dataset_dir", interrupted)
  assert convert.cli(["convert", str(tmp_path)]) == 130
  assert "interrupted: the shards converted so far are kept; rerun" in capsys.readouterr().err


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
    (dict(num_workers=-1), "num_workers"),
    (dict(read_threads=0), "read_threads"),
    (dict(prefetch=0), "prefetch"),
    (dict(eval_split="validation"), "eval_split"),
    (dict(source="tfds"), "name"),
    (dict(data_dir="/somewhere"), "data_dir"),
  ],
)
def test_bad_field_raises_naming_it(overrides, field):
  config = data.default_data_config(**overrides)
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
  return data.default_data_config(source="image_folder", data_dir=root and str(root), **overrides)


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


def test_bad_make_dataset_arguments():
  config = data.default_data_config()
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
  assert config.horizontal_flip and config.num_workers > 0
  assert config.eval_split == "validation"
  assert config.eval_crop_fraction == 0.875
  assert config.data_dir == "gs://bucket/tfds"


def reference_crop(image: np.ndarray, seed: int, config, out_hw: tuple[int, int]) -> np.ndarray:
  """The reference's RandomResizedCrop + flip on a PIL image, from the
  seed's draws: Pillow's crop, then its resize of the crop
  (torchvision's F.resized_crop)."""
  rng = np.random.default_rng(seed)
  top, left, height, width = transforms.random_resized_crop_box(
    rng, image.shape[0], image.shape[1], config.crop_scale, config.crop_ratio
  )
  expected = Image.fromarray(image).crop((left, top, left + width, top + height))
  expected = np.asarray(expected.resize(out_hw[::-1], Image.BICUBIC))
  if rng.uniform() < 0.5 and config.horizontal_flip:
    expected = expected[:, ::-1]
  return expected


def test_rectangular_crops_and_eval_are_the_reference_operations():
  """image_size=(height, width): the training crop is Pillow's crop then
  resize to width x height; eval resizes to (int(h / crop_pct), int(w /
  crop_pct)) (timm's rule for non-square inputs) and takes the centre."""
  image = np.random.RandomState(1).randint(0, 256, size=(50, 70, 3)).astype(np.uint8)
  config = data.default_data_config(image_size=(24, 40), channels=3, eval_crop_fraction=0.8)
  for seed in range(5):
    out = transforms.train_transform(image, np.random.default_rng(seed), config)
    assert out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, reference_crop(image, seed, config, (24, 40)))
  assert transforms.eval_resize_shape(50, 70, (24, 40), 0.8) == (30, 50)
  resized = np.asarray(Image.fromarray(image).resize((50, 30), Image.BICUBIC))
  np.testing.assert_array_equal(transforms.eval_transform(image, config), resized[3:27, 5:45])
  # An int stays square; a bad size is refused with the field's name.
  assert transforms.train_transform(
    image, np.random.default_rng(0), data.default_data_config(image_size=24, channels=3)
  ).shape == (24, 24, 3)
  with pytest.raises(ValueError, match="image_size"):
    data.make_iterator(
      data.default_data_config(image_size=(24, 0)),
      split="train",
      global_batch_size=4,
      train=True,
      seed=0,
    )
