"""The native crop decoder (mae_jax/data/crop_resize.c) against the
reference's own operation: what torchvision's `F.resized_crop` runs on a PIL
image (and timm's RandomResizedCropAndInterpolation), Pillow's decode, then
`img.crop(box)`, then `.resize(size, BICUBIC)`: pixel for pixel, on natural
photos in every JPEG layout the decoder handles differently, small images
and boxes on the image's edges; and its fallbacks (not built, switched off,
files it refuses)."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from mae_jax import build_native
from mae_jax.data import crop_resize, default_data_config, transforms


@pytest.fixture(scope="module")
def native(tmp_path_factory):
  """The library setup.sh built; fails if it could have been built and was
  not, skips only on a machine without a C compiler or libjpeg headers."""
  if crop_resize.load() is None:
    try:
      crop_resize.build(output=str(tmp_path_factory.mktemp("lib") / "probe.so"))
    except crop_resize.BuildError as error:
      pytest.skip(f"the native crop decoder cannot be built here: {error}")
    pytest.fail("the native crop decoder builds here but is not built: run bash setup.sh")
  return crop_resize.load()


@pytest.fixture(scope="module")
def clone_libraries(native, tmp_path_factory):
  """Builds with only the lower vector clones: the CPU's own pick is then
  AVX2 or plain C, so each clone's pixels are checked on this machine."""
  folder = tmp_path_factory.mktemp("clones")
  return {
    clones: crop_resize.build(output=str(folder / f"{clones}.so"), clones=clones)
    for clones in ("avx2", "plain")
  }


@pytest.fixture(params=sorted(crop_resize.CLONE_FLAGS))
def clone(request, clone_libraries, monkeypatch):
  """The pixel tests run once per build: every clone (setup.sh's), AVX2
  and plain only, plain only."""
  if request.param != "all":
    monkeypatch.setattr(crop_resize, "LIBRARY", clone_libraries[request.param])
    crop_resize.load.cache_clear()
  expected = {"avx2": {"AVX2", "plain C"}, "plain": {"plain C"}}
  assert crop_resize.vector_code() in expected.get(request.param, crop_resize.VECTOR_CODE.values())
  yield request.param
  monkeypatch.undo()
  crop_resize.load.cache_clear()


def test_each_build_runs_the_widest_clone_the_cpu_has(native, clone_libraries, monkeypatch):
  with open("/proc/cpuinfo") as info:
    flags = set(next(line for line in info if line.startswith("flags")).split())
  widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "plain C"
  assert crop_resize.vector_code() == widest
  assert f"{widest} resize" in crop_resize.describe()
  monkeypatch.setattr(crop_resize, "LIBRARY", clone_libraries["avx2"])
  crop_resize.load.cache_clear()
  try:
    assert crop_resize.vector_code() == ("plain C" if widest == "plain C" else "AVX2")
  finally:
    monkeypatch.undo()
    crop_resize.load.cache_clear()
  with pytest.raises(ValueError, match="clones="):
    crop_resize.build(output=str(clone_libraries["avx2"]), clones="avx3")


def photo(shape=(375, 500), offset=(0, 0), which=0):
  from sklearn.datasets import load_sample_images

  image = load_sample_images().images[which]
  top, left = offset
  return image[top : top + shape[0], left : left + shape[1]]


def encode(pixels, mode="RGB", **options):
  buffer = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", **options)
  return buffer.getvalue()


def reference(encoded, channels, box, shape):
  """What the reference runs (torchvision's F.resized_crop on a PIL image):
  Pillow's decoder, `crop`, then `resize` of the crop."""
  decoded = Image.open(io.BytesIO(encoded)).convert("L" if channels == 1 else "RGB")
  top, left, height, width = box
  cropped = decoded.crop((left, top, left + width, top + height))
  return transforms.to_array(cropped.resize((shape[1], shape[0]), Image.BICUBIC))


def lookalike(encoded, box, shape):
  """Pillow's `resize(box=...)`: its taps read the image around the box."""
  decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
  top, left, height, width = box
  return transforms.to_array(
    decoded.resize((shape[1], shape[0]), Image.BICUBIC, box=(left, top, left + width, top + height))
  )


def random_boxes(rng, height, width, count):
  boxes = [
    transforms.random_resized_crop_box(rng, height, width, (0.2, 1.0), (3 / 4, 4 / 3))
    for _ in range(count)
  ]
  # The edges and corners, where the window meets the image's border;
  # thin strips, and a box the output's size (no resampling).
  boxes += [(0, 0, height, width), (0, 0, height // 3, width // 3)]
  boxes += [(height - height // 4, width - width // 4, height // 4, width // 4)]
  boxes += [(0, width // 2, height, 1), (height - 2, 0, 2, width)]
  return boxes


LAYOUTS = {
  "4:2:0 q90": dict(quality=90),
  "4:2:0 q75": dict(quality=75),
  "4:2:2": dict(quality=90, subsampling=1),
  "4:4:4": dict(quality=90, subsampling=0),
  "progressive": dict(quality=90, progressive=True),
  "restart markers, optimized": dict(quality=85, optimize=True, restart_marker_rows=1),
}


def test_the_pass_order_is_pillows():
  """Pillow resizes in two passes, rounding in between; since 13 it runs
  the vertical pass first for some shapes. `vertical_pass_first` names
  which, checked here against the installed Pillow on random shapes."""
  rng = np.random.default_rng(3)
  orders = set()
  for _ in range(300):
    in_shape = tuple(int(n) for n in rng.integers(2, 200, 2))
    out_shape = tuple(int(n) for n in rng.integers(4, 80, 2))
    if in_shape[0] == out_shape[0] or in_shape[1] == out_shape[1]:
      continue  # one pass only
    image = Image.fromarray(rng.integers(0, 256, in_shape, dtype=np.uint8))
    both = np.asarray(image.resize(out_shape[::-1], Image.BICUBIC))
    first = (in_shape[0], out_shape[1])  # after the horizontal pass
    if crop_resize.vertical_pass_first(in_shape, out_shape):
      first = (out_shape[0], in_shape[1])
    two = image.resize(first[::-1], Image.BICUBIC).resize(out_shape[::-1], Image.BICUBIC)
    np.testing.assert_array_equal(both, np.asarray(two), f"{in_shape} -> {out_shape}")
    orders.add(first[0] == out_shape[0])
  assert orders == {False, crop_resize.pillow_can_resize_vertically_first()}
  assert crop_resize.pillow_can_resize_vertically_first() == (
    int(Image.__version__.split(".")[0]) >= 13
  )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_train_crops_are_the_reference_pixels(clone, layout):
  rng = np.random.default_rng(sorted(LAYOUTS).index(layout))
  orders = set()
  for which in (0, 1):
    encoded = encode(photo(offset=(40, 60), which=which), **LAYOUTS[layout])
    for box in random_boxes(rng, 375, 500, 12) + [(20, 30, 300, 150)]:
      orders.add(crop_resize.vertical_pass_first(box[2:], (224, 224)))
      ours = crop_resize.crop_resize(encoded, 3, box, (224, 224))
      np.testing.assert_array_equal(ours, reference(encoded, 3, box, (224, 224)), str(box))
  assert orders == {False, crop_resize.pillow_can_resize_vertically_first()}


def test_a_large_photo_and_an_output_sized_box_are_the_reference_pixels(clone):
  """1920x1440 (a window far smaller than the image) and a 224x224 box,
  which Pillow copies without resampling."""
  large = np.asarray(Image.fromarray(photo(which=1)).resize((1920, 1440), Image.LANCZOS))
  encoded = encode(large, quality=90)
  rng = np.random.default_rng(11)
  for box in random_boxes(rng, 1440, 1920, 4) + [(600, 900, 224, 224)]:
    ours = crop_resize.crop_resize(encoded, 3, box, (224, 224))
    np.testing.assert_array_equal(ours, reference(encoded, 3, box, (224, 224)), str(box))


def test_the_crop_is_not_pillows_resize_with_a_box():
  """The two operations differ on photos (why the reference's is the one
  to match): by levels at a downscaled box's border (tens on some photos),
  and on a tiny image by more; the native decoder and the fallback give the reference's."""
  encoded = encode(photo(offset=(40, 60)), quality=90)
  box = (10, 10, 360, 480)
  crop = transforms.crop_and_resize(encoded, 3, box, (224, 224))
  np.testing.assert_array_equal(crop, reference(encoded, 3, box, (224, 224)))
  border = np.abs(crop.astype(int) - lookalike(encoded, box, (224, 224)).astype(int))
  assert border.max() >= 5
  tiny = encode(photo((9, 13), (200, 300)), quality=95)
  tiny_box = (1, 2, 7, 9)
  crop = transforms.crop_and_resize(tiny, 3, tiny_box, (224, 224))
  np.testing.assert_array_equal(crop, reference(tiny, 3, tiny_box, (224, 224)))
  assert np.abs(crop.astype(int) - lookalike(tiny, tiny_box, (224, 224)).astype(int)).max() >= 20


def test_grey_odd_sizes_and_upscaling_are_the_reference_pixels(clone):
  rng = np.random.default_rng(7)
  cases = [
    (encode(photo(), "L", quality=90), 3),  # a grey JPEG as RGB
    (encode(photo(), "L", quality=90), 1),
    (encode(photo((257, 333), (11, 3))), 3),  # sizes that are no multiple of the MCU
    (encode(photo((97, 131), (200, 300))), 3),  # smaller than the output: upscaled
    (encode(photo((9, 13), (200, 300)), quality=95), 3),  # a few pixels
    (encode(photo((9, 13), (200, 300)), "L", quality=95), 1),
  ]
  for encoded, channels in cases:
    height, width = Image.open(io.BytesIO(encoded)).size[::-1]
    for box in random_boxes(rng, height, width, 8):
      for shape in ((224, 224), (64, 48)):
        ours = crop_resize.crop_resize(encoded, channels, box, shape)
        expected = transforms.crop_and_resize(
          transforms.decode(encoded, channels), channels, box, shape
        )
        np.testing.assert_array_equal(ours, expected, f"{box} {shape} {channels}")
        np.testing.assert_array_equal(ours, reference(encoded, channels, box, shape))


def test_eval_centre_crop_is_the_reference(clone):
  """The reference's eval: Resize(256) of the whole image (Pillow's resize,
  no box), then CenterCrop(224) at int(round((h - 224) / 2))."""
  for crop_fraction in (0.875, 1.0):
    config = default_data_config(image_size=224, channels=3, eval_crop_fraction=crop_fraction)
    # Portrait, landscape, odd, and tall enough that Pillow 13 resizes it
    # vertical pass first.
    for shape in ((375, 500), (500, 375), (257, 333), (640, 300)):
      pixels = photo(shape) if shape[0] < shape[1] else photo(shape[::-1]).transpose(1, 0, 2)
      encoded = encode(np.ascontiguousarray(pixels), quality=90)
      ours = transforms.eval_transform(encoded, config)
      crop_resize.enabled = False
      try:
        fallback = transforms.eval_transform(encoded, config)
      finally:
        crop_resize.enabled = True
      np.testing.assert_array_equal(ours, fallback)
      assert crop_resize.vertical_pass_first(shape, (546, 256)) == (shape == (640, 300))
      decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
      height, width = transforms.eval_resize_shape(*shape, 224, crop_fraction)
      resized = np.asarray(decoded.resize((width, height), Image.BICUBIC))
      top, left = int(round((height - 224) / 2)), int(round((width - 224) / 2))
      np.testing.assert_array_equal(ours, resized[top : top + 224, left : left + 224])


def test_the_train_transform_uses_it_and_gives_the_same_images(native):
  config = default_data_config(
    image_size=96, channels=3, horizontal_flip=True, randaugment_ops=2, random_erasing=0.25
  )
  encoded = encode(photo(), quality=90)
  rng_seeds = range(6)
  native_images = [
    transforms.train_transform(encoded, np.random.default_rng(s), config) for s in rng_seeds
  ]
  crop_resize.enabled = False
  try:
    assert not crop_resize.available()
    assert "switched off" in crop_resize.describe()
    fallback = [
      transforms.train_transform(encoded, np.random.default_rng(s), config) for s in rng_seeds
    ]
  finally:
    crop_resize.enabled = True
  for ours, theirs in zip(native_images, fallback):
    np.testing.assert_array_equal(ours, theirs)
  assert "native window decode" in crop_resize.describe()


def test_files_it_refuses_fall_back_to_the_full_decode(native):
  good = encode(photo(), quality=90)
  box = (10, 20, 200, 300)
  # CMYK: libjpeg cannot give RGB; Pillow's full decode does.
  cmyk = encode(photo(), "CMYK", quality=90)
  assert crop_resize.crop_resize(cmyk, 3, box, (64, 64)) is None
  np.testing.assert_array_equal(
    transforms.crop_and_resize(cmyk, 3, box, (64, 64)), reference(cmyk, 3, box, (64, 64))
  )
  # Trailing bytes after the end-of-image marker: the full decode decides.
  padded = good + b"\x00" * 16
  assert crop_resize.crop_resize(padded, 3, box, (64, 64)) is None
  # Truncated, even below the window: refused as the strict full decode does.
  truncated = good[: len(good) * 3 // 4]
  assert crop_resize.crop_resize(truncated, 3, box, (64, 64)) is None
  with pytest.raises(transforms.UndecodableImage):
    transforms.crop_and_resize(truncated, 3, box, (64, 64))
  # Corrupt entropy data inside the window: the library's warning is an error.
  corrupt = bytearray(good)
  start = good.index(b"\xff\xda") + 200
  corrupt[start : start + 400] = bytes(range(256)) + bytes(144)
  assert crop_resize.crop_resize(bytes(corrupt), 3, (0, 0, 375, 500), (64, 64)) is None
  # A box outside the image is refused with a message, not a crash.
  assert crop_resize.crop_resize(good, 3, (300, 0, 200, 100), (64, 64)) is None


def test_build_errors_say_what_is_missing(tmp_path, monkeypatch, capsys):
  with pytest.raises(crop_resize.BuildError, match="no C compiler 'no-such-cc'"):
    crop_resize.build(compiler="no-such-cc", output=str(tmp_path / "x.so"))
  # No libjpeg headers: the compiler's error, and which package to install;
  # first from a stand-in compiler (runs on a machine without one) ...
  stand_in = tmp_path / "cc-without-headers"
  stand_in.write_text(
    "#!/bin/sh\necho 'crop_resize.c:44:10: fatal error: jpeglib.h: No such file' >&2\nexit 1\n"
  )
  stand_in.chmod(0o755)
  with pytest.raises(crop_resize.BuildError, match="libjpeg-turbo's headers are missing"):
    crop_resize.build(compiler=str(stand_in), output=str(tmp_path / "x.so"))
  # ... then from the machine's own compiler, where it has one.
  if shutil.which("cc"):
    empty = tmp_path / "include"
    empty.mkdir()
    (empty / "jpeglib.h").write_text('#error "jpeglib.h is missing"\n')
    monkeypatch.setenv("CPATH", str(empty))
    with pytest.raises(crop_resize.BuildError, match="libjpeg-turbo's headers are missing"):
      crop_resize.build(output=str(tmp_path / "x.so"))
  # The command setup.sh runs says so and exits 1; the library in use stays.
  monkeypatch.setenv("CC", "no-such-cc")
  assert build_native.main() == 1
  assert "works without it" in capsys.readouterr().err
  assert not (tmp_path / "x.so").exists()


def test_the_cli_builds_and_reports(native, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(crop_resize, "LIBRARY", str(tmp_path / "built.so"))
  crop_resize.load.cache_clear()
  try:
    assert "not built" in crop_resize.describe()
    assert crop_resize.crop_resize(encode(photo()), 3, (0, 0, 10, 10), (8, 8)) is None
    assert build_native.main() == 0
    assert "native window decode" in capsys.readouterr().out
    assert crop_resize.load() is not None
  finally:
    monkeypatch.undo()
    crop_resize.load.cache_clear()
  assert crop_resize.load() is not None


def test_a_library_built_from_another_source_is_not_used(native, tmp_path, monkeypatch):
  """A stale build (its arguments may differ) falls back instead of being called."""
  source = (
    open(crop_resize.SOURCE)
    .read()
    .replace(
      f"mae_crop_resize_abi(void) {{ return {crop_resize.ABI}; }}",
      f"mae_crop_resize_abi(void) {{ return {crop_resize.ABI - 1}; }}",
    )
  )
  assert f"return {crop_resize.ABI - 1};" in source
  (tmp_path / "old.c").write_text(source)
  monkeypatch.setattr(crop_resize, "SOURCE", str(tmp_path / "old.c"))
  monkeypatch.setattr(crop_resize, "LIBRARY", str(tmp_path / "old.so"))
  try:
    crop_resize.build()
    assert crop_resize.load() is None and not crop_resize.available()
    assert "older source" in crop_resize.describe()
  finally:
    monkeypatch.undo()
    crop_resize.load.cache_clear()
  assert crop_resize.load() is not None
