"""Keeps libraries' routine INFO chatter out of the run logs."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class LibraryInfoFilter:
  """Drops orbax's per-save and TFDS's per-read INFO records, and JAX's
  INFO line for each platform it probed and did not find ("Unable to
  initialize backend 'tpu'" on every CPU or GPU machine). Warnings and
  errors stay, but for orbax's notes that a manager opened only to read
  (a resume, init_from, an export) is read-only: that is what was asked.
  gcsfs's own traceback when it runs out of retries is dropped too: the
  run's one-line failure (exit 74) names the error. A GPU that is present
  but unusable is a JAX warning, and stays."""

  NOISY = ("/orbax/", "/tensorflow_datasets/")
  ABSENT_BACKEND = "Unable to initialize backend"
  READ_ONLY_NOTES = ("read only", "read_only=True")

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/gcsfs/" in record.pathname and "out of retries" in str(record.msg):
      return False
    if record.levelno >= std_logging.WARNING:
      if "/orbax/" in record.pathname and record.levelno == std_logging.WARNING:
        return not any(note in str(record.msg) for note in self.READ_ONLY_NOTES)
      return True
    if any(part in record.pathname for part in self.NOISY):
      return False
    return not str(record.msg).startswith(self.ABSENT_BACKEND)


def quiet_library_info() -> None:
  """Installs the filter on absl's logger and handler (every command-line
  entry point; a tool that does not run under absl.app logs through the
  logger alone)."""
  library_filter = LibraryInfoFilter()
  logging.get_absl_handler().addFilter(library_filter)
  std_logging.getLogger("absl").addFilter(library_filter)
