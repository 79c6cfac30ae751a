"""Builds the optional native parts: `python -m mae_jax.build_native`.

Today one: the JPEG crop decoder (`mae_jax.data.crop_resize`), which setup.sh
builds. Exit status 1 when it cannot be built (no C compiler, no libjpeg
headers): mae_jax then runs without it, more slowly, with the same pixels.
"""

from __future__ import annotations

import os
import sys

from mae_jax.data import crop_resize


def main() -> int:
  try:
    path = crop_resize.build()
  except crop_resize.BuildError as error:
    print(f"The native JPEG crop decoder was not built: {error}", file=sys.stderr)
    print(
      "mae_jax works without it (simplejpeg + Pillow: the same pixels, about half the rate).",
      file=sys.stderr,
    )
    return 1
  print(f"Built {os.path.relpath(path)}.")
  print(crop_resize.describe())
  return 0


if __name__ == "__main__":
  sys.exit(main())
