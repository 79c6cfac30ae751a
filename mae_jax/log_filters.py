"""Keeps libraries' routine INFO chatter out of the run logs."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class LibraryInfoFilter:
  """Drops orbax's per-save and TFDS's per-read INFO records, and JAX's
  INFO line for each platform it probed and did not find ("Unable to
  initialize backend 'tpu'" on every CPU or GPU machine). Warnings and
  errors all stay: a GPU that is present but unusable is a JAX warning."""

  NOISY = ("/orbax/", "/tensorflow_datasets/")
  ABSENT_BACKEND = "Unable to initialize backend"

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    if any(part in record.pathname for part in self.NOISY):
      return False
    return not str(record.msg).startswith(self.ABSENT_BACKEND)


def quiet_library_info() -> None:
  """Installs the filter on absl's handler (every command-line entry point)."""
  logging.get_absl_handler().addFilter(LibraryInfoFilter())
