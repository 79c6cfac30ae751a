"""The native crop decoder (crop_resize.c): build it, load it, call it.

One call decodes only the JPEG window of a crop box and resizes the box
with Pillow's arithmetic: the pixels of Pillow's decode, `crop(box)` and
`resize(size, BICUBIC)` (the reference's RandomResizedCrop), bit for bit
(tests/test_crop_resize.py), at about twice their rate (docs/data.md).

No maintained package decodes a JPEG window: simplejpeg decodes whole
images, PyTurboJPEG's crop is a lossless transform (re-encoded, MCU-aligned)
and needs a system TurboJPEG 3 library, and TensorFlow's
`decode_and_crop_jpeg` would put TensorFlow in every input worker. So
setup.sh compiles this small C file against the system's libjpeg-turbo
(`python -m mae_jax.build_native`). Where it cannot (no C
compiler or no libjpeg headers), or for JPEGs the library refuses (CMYK,
corrupt data), the transforms fall back to simplejpeg + Pillow, which give
the same pixels more slowly; `describe()` says which is in use and the input
pipeline logs it once.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess

import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "crop_resize.c")
# MAE_JAX_CROP_RESIZE_LIBRARY: a build elsewhere (a read-only install, or
# the AVX2-only build `benchmarks.run input --avx2-code` times); worker
# processes inherit it.
LIBRARY = os.environ.get("MAE_JAX_CROP_RESIZE_LIBRARY") or os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "_crop_resize.so"
)
# -ffp-contract=off: the filter weights must round as Pillow's do (no fused
# multiply-adds); target_clones in the source picks AVX2/AVX-512 at run time.
COMPILE_FLAGS = ("-O3", "-ffp-contract=off", "-fPIC", "-shared")
MESSAGE_BYTES = 256
# mae_crop_resize_abi() of the source this module calls; a library built
# from another version is not used (`python -m mae_jax.build_native`).
ABI = 4
# build(clones=...): every vector clone (what setup.sh builds), or only the
# lower ones, for the tests (each clone's pixels) and the benchmark (the
# AVX2 code timed on an AVX-512 CPU).
CLONE_FLAGS = {"all": (), "avx2": ("-DMAE_CLONES_AVX2",), "plain": ("-DMAE_CLONES_PLAIN",)}
VECTOR_CODE = {512: "AVX-512", 256: "AVX2", 0: "plain C"}
# A JPEG that does not end with the end-of-image marker is truncated (or has
# trailing bytes): the full decode decides, since the window may end before
# the damage and the strict full decode refuses such files.
END_OF_IMAGE = b"\xff\xd9"

# Tests and benchmarks set this to False to measure or check the fallback.
enabled = True


class BuildError(RuntimeError):
  """The C compiler or libjpeg's headers are missing, or compiling failed."""


def build(compiler: str | None = None, output: str | None = None, clones: str = "all") -> str:
  """Compiles crop_resize.c into `output` (default: `LIBRARY`) with the
  vector clones `clones` names (CLONE_FLAGS); returns its path."""
  compiler = compiler or os.environ.get("CC") or "cc"
  output = output or LIBRARY
  if clones not in CLONE_FLAGS:
    raise ValueError(f"clones={clones!r}: use one of {sorted(CLONE_FLAGS)}")
  if shutil.which(compiler) is None:
    raise BuildError(f"no C compiler {compiler!r} on PATH (set CC, or install gcc)")
  partial = f"{output}.{os.getpid()}.tmp"
  command = [compiler, *COMPILE_FLAGS, *CLONE_FLAGS[clones], "-o", partial, SOURCE, "-ljpeg"]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    hint = ""
    if "jpeglib.h" in result.stderr:
      hint = " (libjpeg-turbo's headers are missing: e.g. apt-get install libjpeg-turbo8-dev or libjpeg62-turbo-dev)"
    raise BuildError(f"{' '.join(command)} failed{hint}:\n{result.stderr.strip()[-1500:]}")
  os.replace(partial, output)  # Atomic: a running job never loads half a file.
  load.cache_clear()
  return output


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
  """The built library, or None when it is missing or does not load."""
  if not os.path.exists(LIBRARY):
    return None
  try:
    library = ctypes.CDLL(LIBRARY)
    abi = library.mae_crop_resize_abi()
  except (OSError, AttributeError):  # Not loadable, or older than the ABI check.
    return None
  if abi != ABI:
    return None
  function = library.mae_crop_resize
  function.restype = ctypes.c_int
  function.argtypes = (
    [ctypes.c_char_p, ctypes.c_size_t]
    + [ctypes.c_int] * 13
    + [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
  )
  library.mae_crop_resize_version.restype = ctypes.c_int
  library.mae_crop_resize_vector_bits.restype = ctypes.c_int
  return library


@functools.lru_cache(maxsize=1)
def pillow_can_resize_vertically_first() -> bool:
  """Whether the installed Pillow runs some resizes' vertical pass first.

  Pillow 13 does when the height shrinks by more than twice what the width
  shrinks (`vertical_pass_first`); earlier Pillows always run the
  horizontal pass first. The two orders round the intermediate image
  differently, by a few levels. Found by resizing a small noise image and
  comparing with both one-axis compositions, so the native decoder gives
  the pixels of whichever Pillow the fallback (and the reference) runs."""
  from PIL import Image

  noise = np.random.default_rng(0).integers(0, 256, (24, 6), dtype=np.uint8)
  image = Image.fromarray(noise)
  both = np.asarray(image.resize((8, 8), Image.BICUBIC))
  vertical = image.resize((6, 8), Image.BICUBIC).resize((8, 8), Image.BICUBIC)
  return bool(np.array_equal(both, np.asarray(vertical)))


def vertical_pass_first(in_shape: tuple[int, int], out_shape: tuple[int, int]) -> bool:
  """Whether Pillow resizes an `in_shape` = (height, width) image to
  `out_shape` vertical pass first (measured on Pillow 13.0.0 over 3,000
  random shapes: the height shrinks, and by more than twice the width's
  shrink)."""
  (in_height, in_width), (out_height, out_width) = in_shape, out_shape
  shrinks_more = in_height - out_height > 2 * (in_width - out_width)
  return in_height > out_height and shrinks_more and pillow_can_resize_vertically_first()


def vector_code() -> str | None:
  """Which of the resize's clones this CPU runs ("AVX-512", "AVX2",
  "plain C"), or None when the library is not loaded."""
  library = load()
  return None if library is None else VECTOR_CODE[library.mae_crop_resize_vector_bits()]


def available() -> bool:
  return enabled and load() is not None


def describe() -> str:
  """One line: which JPEG crop path the transforms use, and why."""
  library = load()
  if library is None:
    return (
      "JPEG crops: simplejpeg full decode + Pillow resize (the native crop decoder is not "
      "built, or built from an older source; `python -m mae_jax.build_native` builds it, "
      "about 2x faster, same pixels)"
    )
  if not enabled:
    return "JPEG crops: simplejpeg full decode + Pillow resize (native crop decoder switched off)"
  version = library.mae_crop_resize_version()
  turbo = f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
  return (
    f"JPEG crops: native window decode + resize (libjpeg-turbo {turbo}, {vector_code()} resize)"
  )


def crop_resize(
  encoded: bytes,
  channels: int,
  box: tuple[int, int, int, int],
  resize_shape: tuple[int, int],
  part: tuple[int, int, int, int] | None = None,
  flip: bool = False,
  out: np.ndarray | None = None,
) -> np.ndarray | None:
  """The crop `box` = (top, left, height, width) of the JPEG, resized by
  Pillow's bicubic filter (crop, then resize: the filter sees only the box)
  to `resize_shape` = (height, width), as uint8 [h, w, channels]; only
  `part` = (top, left, height, width) of the result when given (eval's
  centre crop), mirrored left to right if `flip`; written into `out` when
  given (C-contiguous uint8 of that shape: a batch's slot). None when the
  native path cannot give it (not built, off, or a JPEG it refuses): the
  caller then decodes in full."""
  library = load() if enabled else None
  if library is None or not encoded.endswith(END_OF_IMAGE):
    return None
  if part is None:
    part = (0, 0, *resize_shape)
  shape = (part[2], part[3], channels)
  if out is None:
    out = np.empty(shape, np.uint8)
  elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
    raise ValueError(f"out is {out.dtype} {out.shape}, expected C-contiguous uint8 {shape}")
  message = ctypes.create_string_buffer(MESSAGE_BYTES)
  failed = library.mae_crop_resize(
    encoded,
    len(encoded),
    channels,
    *box,
    *resize_shape,
    *part,
    int(flip),
    int(vertical_pass_first(box[2:], resize_shape)),
    out.ctypes.data,
    message,
    MESSAGE_BYTES,
  )
  return None if failed else out
