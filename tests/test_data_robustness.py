"""Bad image data and bad paths: converted, skipped and counted, or a clear
error before anything compiles. CPU only, no network; every file is made here.
"""

from __future__ import annotations

import io
import itertools
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mae_jax import data
from mae_jax.data import augment, sources

RNG = np.random.RandomState(0)


def encoded(image: Image.Image, fmt: str) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt)
  return buffer.getvalue()


def rgb(height=20, width=24) -> Image.Image:
  return Image.fromarray(RNG.randint(0, 256, (height, width, 3)).astype(np.uint8))


GOOD_JPEG = encoded(rgb(), "JPEG")

# Readable files of every kind the pipeline must convert: name -> bytes.
# (PIL sizes are (width, height): "tiny_5x3" is 3 rows of 5.)
READABLE = {
  "rgb.jpg": GOOD_JPEG,
  "rgb2.jpg": encoded(rgb(31, 17), "JPEG"),
  "gray.jpg": encoded(rgb().convert("L"), "JPEG"),
  "gray.png": encoded(rgb().convert("L"), "PNG"),
  "rgba.png": encoded(rgb().convert("RGBA"), "PNG"),
  "cmyk.jpg": encoded(rgb().convert("CMYK"), "JPEG"),
  "palette.png": encoded(rgb().convert("P"), "PNG"),
  "gray_alpha.png": encoded(rgb().convert("LA"), "PNG"),
  "tiny_5x3.png": encoded(rgb(3, 5), "PNG"),
  "tiny_3x5.jpg": encoded(rgb(5, 3), "JPEG"),
  "row_1x9.png": encoded(rgb(1, 9), "PNG"),
  "column_9x1.jpg": encoded(rgb(9, 1).convert("L"), "JPEG"),
  "pixel.png": encoded(rgb(1, 1), "PNG"),
}
UNREADABLE = {
  "truncated.jpg": GOOD_JPEG[: len(GOOD_JPEG) // 2],
  "random_bytes.jpg": RNG.bytes(700),
  "truncated.png": READABLE["gray.png"][:60],
  "empty.jpg": b"",
}


def write_folder(root, files, splits=("train", "test"), classes=("cat", "dog")):
  """root/<split>/<class>/<name> for every file, in every split and class."""
  for split, class_name in itertools.product(splits, classes):
    folder = root / split / class_name
    folder.mkdir(parents=True)
    for name, content in files.items():
      (folder / name).write_bytes(content)
  return root


def folder_config(root, channels=3, **overrides):
  return data.default_data_config(
    source="image_folder",
    data_dir=str(root),
    channels=channels,
    mean=(0.5,) * channels,
    std=(0.25,) * channels,
    **overrides,
  )


def take(config, n=None, **kwargs):
  kwargs = dict(dict(seed=0, process_index=0, process_count=1), **kwargs)
  return list(itertools.islice(data.make_iterator(config, **kwargs), n))


def check_batches(batch_list, batch_size, size, channels):
  for batch in batch_list:
    assert batch["image"].shape == (batch_size, size, size, channels)
    assert batch["image"].dtype == np.float32
    assert np.isfinite(batch["image"]).all()
    assert batch["label"].dtype == np.int32


# ----------------------------------------------------------- image folders --


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_skips_unreadable_files_and_converts_the_rest(tmp_path, caplog, channels):
  root = write_folder(tmp_path / "images", {**READABLE, **UNREADABLE})
  num_readable = 2 * len(READABLE)  # Two classes.
  config = folder_config(root, channels, image_size=32)
  with caplog.at_level(logging.WARNING):
    data.validate_data_config(config)
  # Counted once per split, naming the first bad file and why.
  for split in ("train", "test"):
    assert (
      f"images/{split}': skipped {2 * len(UNREADABLE)} of "
      f"{num_readable + 2 * len(UNREADABLE)} files: unreadable"
    ) in caplog.text
  first_bad = caplog.text.split("(first: ")[1]
  assert any(name in first_bad.split(":")[0] for name in UNREADABLE)
  assert data.dataset_info(config) == ({"train": num_readable, "test": num_readable}, 2)

  for cache in (True, False):
    train = take(
      folder_config(root, channels, image_size=32, cache=cache),
      4,
      split="train",
      global_batch_size=8,
      train=True,
    )
    check_batches(train, 8, 32, channels)
  evaluation = take(config, split="test", global_batch_size=8, train=False)
  check_batches(evaluation, 8, 32, channels)
  assert len(evaluation) == -(-num_readable // 8)
  assert sum(b["mask"].sum() for b in evaluation) == num_readable
  # Two hosts split the readable files between them, same number of batches.
  hosts = [
    take(config, split="test", global_batch_size=8, train=False, process_index=i, process_count=2)
    for i in (0, 1)
  ]
  assert [len(h) for h in hosts] == [len(hosts[0])] * 2
  assert sum(b["mask"].sum() for h in hosts for b in h) == num_readable


def test_image_folder_with_no_readable_file_is_a_clear_error(tmp_path):
  root = write_folder(tmp_path / "broken", UNREADABLE)
  with pytest.raises(
    data.DataConfigError,
    match=r"train_split='train' is invalid: none of the 8 files "
    r"in image folder '.*broken/train' can be read",
  ):
    data.validate_data_config(folder_config(root))


def test_readable_check_runs_once_per_process(tmp_path, monkeypatch):
  root = write_folder(tmp_path / "images", {"a.jpg": GOOD_JPEG}, splits=("train",))
  config = folder_config(root)
  data.validate_data_config(config, splits=["train"])
  calls = []
  monkeypatch.setattr(augment, "decode", lambda *args: calls.append(args) or tf.zeros([1, 1, 3]))
  data.validate_data_config(config, splits=["train"])
  assert data.dataset_info(config)[0]["train"] == 2
  assert not calls


def test_large_folders_are_not_decoded_up_front_and_still_train(tmp_path, caplog):
  """Above data.check_images_up_to files (an ImageNet-sized folder), the
  start-up decode pass is skipped; the stream drops what does not decode."""
  root = write_folder(tmp_path / "images", {**READABLE, **UNREADABLE}, splits=("train",))
  total = 2 * (len(READABLE) + len(UNREADABLE))
  config = folder_config(root, image_size=16, cache=False, check_images_up_to=total - 1)
  with caplog.at_level(logging.INFO):
    data.validate_data_config(config, splits=["train"])
  assert f"not decoding its {total} files up front" in caplog.text
  assert "skipped" not in caplog.text
  assert data.dataset_info(config)[0]["train"] == total  # listed, not checked
  check_batches(take(config, 3, split="train", global_batch_size=4, train=True), 4, 16, 3)
  with pytest.raises(data.DataConfigError, match="check_images_up_to"):
    data.validate_data_config(folder_config(root, check_images_up_to=-2))


# ----------------------------------------------------- decoding, resizing --


def palette_image(colour) -> Image.Image:
  image = Image.new("P", (6, 4), 1)  # Every pixel is palette entry 1.
  image.putpalette([0, 0, 0, *colour])
  return image


# name -> (bytes, RGB the decoder must give for the solid colour).
SOLID = {
  "gray": (encoded(Image.new("L", (6, 4), 100), "PNG"), (100, 100, 100)),
  "rgba": (
    encoded(Image.new("RGBA", (6, 4), (10, 20, 30, 40)), "PNG"),
    (10, 20, 30),
  ),  # Alpha dropped, colour kept.
  "palette": (encoded(palette_image((200, 0, 0)), "PNG"), (200, 0, 0)),
  # CMYK (0, 255, 255, 0) is red; PIL writes Adobe (inverted) CMYK JPEGs.
  "cmyk": (encoded(Image.new("CMYK", (6, 4), (0, 255, 255, 0)), "JPEG"), (255, 0, 0)),
  "gray_alpha": (encoded(Image.new("LA", (6, 4), (50, 9)), "PNG"), (50, 50, 50)),
}


@pytest.mark.parametrize("name", sorted(SOLID))
def test_image_modes_decode_to_rgb_and_grayscale(name):
  content, expected = SOLID[name]
  image = augment.decode(tf.constant(content), stored_channels=3)
  assert image.shape == (4, 6, 3) and image.dtype == tf.uint8
  np.testing.assert_allclose(image.numpy().reshape(-1, 3).mean(0), expected, atol=3)
  gray = augment.match_channels(image, 1)
  assert gray.shape == (4, 6, 1)
  luma = np.dot(expected, [0.2989, 0.587, 0.114])
  np.testing.assert_allclose(gray.numpy().mean(), luma, atol=3)


@pytest.mark.parametrize(
  "height, width", [(1, 1), (1, 9), (9, 1), (3, 5), (5, 3), (8, 8), (2, 300)]
)
@pytest.mark.parametrize("size", [32, 224])
def test_images_smaller_than_the_crop_are_upscaled(height, width, size):
  image = tf.constant(RNG.randint(0, 256, (height, width, 3)).astype(np.uint8))
  config = data.default_data_config(
    image_size=size, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, eval_crop_fraction=0.875
  )
  crops = [
    augment.random_resized_crop(
      image, tf.constant([i, 7]), size=size, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
    )
    for i in range(3)
  ]
  crops.append(augment.eval_transform(image, config))
  for crop in crops:
    assert crop.shape == (size, size, 3)
    assert np.isfinite(crop.numpy()).all()


# ------------------------------------------- undecodable images in a stream --


def fake_shard(images, max_examples_per_host=None):
  """A host shard of encoded `images` labelled 0, 1, 2, ... (as if TFDS)."""
  dataset = tf.data.Dataset.from_tensor_slices(
    {"image": tf.constant(images, tf.string), "label": tf.range(len(images), dtype=tf.int32)}
  )
  return sources.HostShard(
    dataset=dataset,
    num_examples=len(images),
    stored_channels=3,
    max_examples_per_host=max_examples_per_host or len(images),
  )


@pytest.mark.parametrize("cache", [True, False])
def test_undecodable_images_in_the_stream_are_dropped(monkeypatch, cache):
  # As a corrupt record in a TFDS dataset would be: past the up-front checks.
  images = [
    GOOD_JPEG,
    UNREADABLE["random_bytes.jpg"],
    GOOD_JPEG,
    UNREADABLE["truncated.jpg"],
    READABLE["cmyk.jpg"],
    GOOD_JPEG,
    READABLE["tiny_5x3.png"],
  ]
  good_labels = [0, 2, 4, 5, 6]
  monkeypatch.setattr(sources, "validate_data_config", lambda *args, **kw: None)
  monkeypatch.setattr(
    sources, "read_host_shard", lambda *args, **kw: fake_shard(images, max_examples_per_host=9)
  )
  config = data.default_data_config(
    image_size=16, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, cache=cache
  )
  train = take(config, 3, split="train", global_batch_size=4, train=True)
  check_batches(train, 4, 16, 3)
  assert {int(label) for b in train for label in b["label"]} <= set(good_labels)
  # Eval keeps its batch count (the largest host's 9 examples: 3 batches of
  # 4), so hosts stay in step; the dropped images become padding.
  evaluation = take(config, split="test", global_batch_size=4, train=False)
  check_batches(evaluation, 4, 16, 3)
  assert len(evaluation) == 3
  masks = np.concatenate([b["mask"] for b in evaluation])
  labels = np.concatenate([b["label"] for b in evaluation])
  assert labels[masks == 1].tolist() == good_labels  # In order.


# ------------------------------------------------------------- bad paths --


def test_missing_or_unlistable_local_data_dir_names_the_path(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  missing = tmp_path / "missing"
  for path in (missing, a_file):
    for config in (
      data.default_data_config(source="tfds", name="mnist", data_dir=str(path)),
      folder_config(path),
    ):
      with pytest.raises(
        data.DataConfigError,
        match=(f"data_dir='{re.escape(str(path))}' does not exist.*Check the spelling"),
      ):
        data.validate_data_config(config)
  assert not missing.exists()  # Nothing was created (or downloaded) there.
  with pytest.raises(
    data.DataConfigError,
    match=(f"data_dir='{re.escape(str(a_file))}': cannot build or read the bundled"),
  ):
    data.validate_data_config(data.default_data_config(data_dir=str(a_file)))


@pytest.mark.parametrize(
  "error, message",
  [
    (
      tf.errors.PermissionDeniedError(None, None, "HTTP response code 403"),
      "cannot be read \\(HTTP response code 403\\)",
    ),
    (
      tf.errors.NotFoundError(None, None, "Could not find directory"),
      "does not exist, is not a directory, or cannot be reached",
    ),
  ],
)
@pytest.mark.parametrize("source", ["tfds", "image_folder"])
def test_unreadable_bucket_names_the_path_and_what_to_check(monkeypatch, error, message, source):
  # No network here: stand in for the gs:// file system's answer.
  def listdir(path):
    raise error

  monkeypatch.setattr(tf.io.gfile, "listdir", listdir)
  bucket = "gs://no-such-bucket/tfds"
  config = data.default_data_config(source=source, name="imagenet2012", data_dir=bucket)
  with pytest.raises(
    data.DataConfigError, match=f"data_dir='{re.escape(bucket)}' {message}.*credentials"
  ):
    data.validate_data_config(config)


# --------------------------------------------------- before any compiling --


def test_jobs_refuse_an_unreadable_folder_before_compiling(tmp_path):
  from configs import linprobe as linprobe_config
  from configs import pretrain as pretrain_config
  from mae_jax.evaluate.plan import make_eval_plan
  from mae_jax.train.plan import make_plan

  broken = write_folder(tmp_path / "broken", UNREADABLE)
  mixed = write_folder(tmp_path / "mixed", {**READABLE, **UNREADABLE})

  def pointed_at(config, root):
    config.data.update(source="image_folder", data_dir=str(root))
    config.global_batch_size = 8
    return config

  with pytest.raises(data.DataConfigError, match="none of the 8 files"):
    make_plan(
      pointed_at(pretrain_config.get_config("digits"), broken), num_devices=8, process_count=1
    )
  eval_config = pointed_at(linprobe_config.get_config("digits"), broken)
  eval_config.update(baseline="random_init", init_from="")
  with pytest.raises(data.DataConfigError, match="none of the 8 files"):
    make_eval_plan(eval_config, num_devices=8, process_count=1)
  # With some readable files the plan counts those only.
  plan = make_plan(
    pointed_at(pretrain_config.get_config("digits"), mixed), num_devices=8, process_count=1
  )
  assert plan.num_train_examples == plan.num_eval_examples == 2 * len(READABLE)
