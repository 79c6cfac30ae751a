"""Keeps libraries' routine INFO chatter out of the run logs."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class LibraryInfoFilter:
  """Drops orbax's per-save and TFDS's per-read INFO records (their
  warnings and errors stay)."""

  NOISY = ("/orbax/", "/tensorflow_datasets/")

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
      part in record.pathname for part in self.NOISY
    )


def quiet_library_info() -> None:
  """Installs the filter on absl's handler (every command-line entry point)."""
  logging.get_absl_handler().addFilter(LibraryInfoFilter())
