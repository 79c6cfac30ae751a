"""A split opened for random access, and what every source says when one cannot be.

Each split opens as records: a picklable random-access sequence of
(image, label) pairs, images still encoded (or uint8 arrays for the
digits), so the pipeline reads exactly the examples it needs, in any
order, from any Grain worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from etils import epath

from mae_jax.data.fields import DataConfigError


class ArrayRecords:
  """In-memory uint8 images and their labels (the digits)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, where: str):
    self.images, self.labels, self.where = images, labels, where

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def describe(self, index: int) -> str:
    return f"{self.where} example {index}"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split, opened for random access.

  Attributes:
    records: `records[i]` is (encoded image bytes or uint8 [H, W, C], label);
      label -1 for datasets without labels. Picklable (Grain workers).
    num_classes: None for datasets without a class label.
  """

  records: Any
  num_classes: int | None

  @property
  def num_examples(self) -> int:
    return len(self.records)


def first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def access_hint(path: str | None) -> str:
  if path and path.startswith("gs://"):
    return (
      "Check the bucket and path spelling, that this machine can reach "
      "Cloud Storage, and that its credentials may read the bucket "
      "(`gcloud auth application-default login`, or the VM service "
      "account's storage role); `gcloud storage ls PATH` shows what "
      "this machine sees."
    )
  return "Check the spelling, and that this user may read the directory."


def list_dir(path: str, what: str) -> list[epath.Path]:
  """The entries of `path`, or a `DataConfigError` naming it."""
  try:
    directory = epath.Path(path)
    if not directory.is_dir():
      reason = "does not exist, is not a directory, or cannot be reached"
      raise DataConfigError(
        f"data.data_dir={path!r} {reason}; expected {what}. {access_hint(path)}"
      )
    return sorted(directory.iterdir())
  except OSError as error:
    raise DataConfigError(
      f"data.data_dir={path!r} cannot be read ({first_line(error)}); expected {what}. "
      f"{access_hint(path)}"
    ) from error
