"""Image sizes: an int (a square) or (height, width), as configs give them.

One definition for the model (its patch grid) and the data (its crops and
eval resize), which sit on different floors of the stack.
"""

from __future__ import annotations


def image_hw(size) -> tuple[int, int]:
  """An image size (an int: square; or (height, width)) as (height, width)."""
  if isinstance(size, (list, tuple)):
    return int(size[0]), int(size[1])
  return int(size), int(size)


def is_square(size) -> bool:
  height, width = image_hw(size)
  return height == width


def size_text(size) -> str:
  """'224' or '224x320': for messages and reports."""
  height, width = image_hw(size)
  return str(height) if not isinstance(size, (list, tuple)) else f"{height}x{width}"
