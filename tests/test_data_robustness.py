"""Bad image data and bad paths: converted, replaced deterministically and
counted, or a clear error before anything compiles. CPU only, no network;
every file is made here.
"""

from __future__ import annotations

import io
import itertools
import logging
import re

import numpy as np
import pytest
from PIL import Image

from mae_jax import data
from mae_jax.data import records, transforms

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
    assert batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32


# ----------------------------------------------------------- image folders --


def bad_positions(names):
  return [i for i, name in enumerate(names) if name in UNREADABLE]


@pytest.mark.parametrize("channels", [3, 1])
def test_undecodable_images_are_replaced_by_the_next_good_one_and_counted(
  tmp_path, caplog, channels
):
  root = write_folder(tmp_path / "images", {**READABLE, **UNREADABLE})
  total = 2 * (len(READABLE) + len(UNREADABLE))  # Two classes.
  config = folder_config(root, channels, image_size=32)
  data.validate_data_config(config)
  assert data.dataset_info(config) == ({"train": total, "test": total}, 2)
  with caplog.at_level(logging.WARNING):
    train = take(config, 8, split="train", global_batch_size=8, train=True)
  check_batches(train, 8, 32, channels)
  assert all((b["mask"] == 1).all() for b in train)
  # 64 positions of 34 examples: every example once, some twice; each bad
  # one was replaced (and counted) every time it came up.
  replaced = sum(int(b["replaced"].sum()) for b in train)
  assert replaced >= len(UNREADABLE) * 2
  assert "Replacing" in caplog.text and "does not decode" in caplog.text
  # Resumed past the bad images: the very same batches, the same counts.
  resumed = take(config, 3, split="train", global_batch_size=8, train=True, start_step=5)
  for expected, got in zip(train[5:], resumed):
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key], err_msg=key)
  # Eval leaves bad images out (mask 0, counted) and keeps its batch count.
  evaluation = take(config, split="test", global_batch_size=8, train=False)
  check_batches(evaluation, 8, 32, channels)
  assert len(evaluation) == -(-total // 8)
  masks = np.concatenate([b["mask"] for b in evaluation])
  assert masks.sum() == total - 2 * len(UNREADABLE)
  assert sum(int(b["replaced"].sum()) for b in evaluation) == 2 * len(UNREADABLE)


def test_replacement_is_the_next_decodable_example():
  class Records:
    """Index 1 and 2 do not decode; 3 does."""

    items = [GOOD_JPEG, b"bad", UNREADABLE["truncated.jpg"], READABLE["rgb2.jpg"]]

    def __len__(self):
      return len(self.items)

    def __getitem__(self, index):
      return self.items[index], index

    def describe(self, index):
      return f"item {index}"

  from mae_jax.data import input_pipeline

  decode = lambda raw: transforms.decode(raw, 3)  # noqa: E731
  _, label, replaced = input_pipeline._load(Records(), 1, decode)
  assert (label, replaced) == (3, 1)
  _, label, replaced = input_pipeline._load(Records(), 0, decode)
  assert (label, replaced) == (0, 0)


def test_image_folder_with_no_readable_file_is_a_clear_error(tmp_path):
  root = write_folder(tmp_path / "broken", UNREADABLE)
  with pytest.raises(
    data.DataConfigError,
    match=r"train_split='train' is invalid: none of the first 8 files "
    r"can be read as an image \(first: .*broken/train/cat/",
  ):
    data.validate_data_config(folder_config(root))


@pytest.mark.parametrize("name", sorted(READABLE))
def test_readable_files_of_every_kind_decode(name):
  for channels in (1, 3):
    pixels = transforms.decode(READABLE[name], channels)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[-1] == channels


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_files_raise_undecodable_image(name):
  with pytest.raises(transforms.UndecodableImage):
    transforms.decode(UNREADABLE[name], 3)


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
  image = transforms.decode(content, 3)
  assert image.shape == (4, 6, 3) and image.dtype == np.uint8
  np.testing.assert_allclose(image.reshape(-1, 3).mean(0), expected, atol=3)
  gray = transforms.decode(content, 1)
  assert gray.shape == (4, 6, 1)
  luma = np.dot(expected, [0.2989, 0.587, 0.114])
  np.testing.assert_allclose(gray.mean(), luma, atol=3)


@pytest.mark.parametrize(
  "height, width", [(1, 1), (1, 9), (9, 1), (3, 5), (5, 3), (8, 8), (2, 300)]
)
@pytest.mark.parametrize("size", [32, 224])
def test_images_smaller_than_the_crop_are_upscaled(height, width, size):
  image = RNG.randint(0, 256, (height, width, 3)).astype(np.uint8)
  config = data.default_data_config(
    image_size=size, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, eval_crop_fraction=0.875
  )
  jpeg = encoded(Image.fromarray(image), "JPEG")
  crops = [
    transforms.train_transform(raw, np.random.default_rng(i), config)
    for i in range(3)
    for raw in (image, jpeg)
  ]
  crops.append(transforms.eval_transform(image, config))
  for crop in crops:
    assert crop.shape == (size, size, 3)
    assert np.isfinite(crop).all()


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
  with pytest.raises(data.DataConfigError, match="held in memory and read no directory"):
    data.validate_data_config(data.default_data_config(data_dir=str(a_file)))


@pytest.mark.parametrize(
  "error, message",
  [
    (PermissionError("HTTP response code 403"), "cannot be read \\(HTTP response code 403\\)"),
    (None, "does not exist, is not a directory, or cannot be reached"),
  ],
)
@pytest.mark.parametrize("source", ["tfds", "image_folder"])
def test_unreadable_bucket_names_the_path_and_what_to_check(monkeypatch, error, message, source):
  # No network here: stand in for the gs:// file system's answer.
  class Bucket:
    def __init__(self, path):
      pass

    def is_dir(self):
      if error is not None:
        raise error
      return False

  # TFDS imports itself lazily and reads epath.Path while it does: import it
  # before the stand-in, or a first import here is left half-done for every
  # later test of this process.
  import tensorflow_datasets as tfds

  tfds.core  # noqa: B018  (the lazy attribute access is the import)
  monkeypatch.setattr(records.epath, "Path", Bucket)  # the etils.epath module itself
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
  from mae_jax.core.plan import make_plan
  from mae_jax.evaluate.plan import make_eval_plan

  broken = write_folder(tmp_path / "broken", UNREADABLE)
  mixed = write_folder(tmp_path / "mixed", {**READABLE, **UNREADABLE})

  def pointed_at(config, root):
    config.data.update(source="image_folder", data_dir=str(root))
    config.global_batch_size = 8
    return config

  with pytest.raises(data.DataConfigError, match="none of the first 8 files"):
    make_plan(
      pointed_at(pretrain_config.get_config("digits"), broken), num_devices=8, process_count=1
    )
  eval_config = pointed_at(linprobe_config.get_config("digits"), broken)
  eval_config.update(baseline="random_init", init_from="")
  with pytest.raises(data.DataConfigError, match="none of the first 8 files"):
    make_eval_plan(eval_config, num_devices=8, process_count=1)
  # With some readable files the plan counts every file (bad ones are
  # replaced in the stream).
  plan = make_plan(
    pointed_at(pretrain_config.get_config("digits"), mixed), num_devices=8, process_count=1
  )
  total = 2 * (len(READABLE) + len(UNREADABLE))
  assert plan.num_train_examples == plan.num_eval_examples == total
