"""Errors that mean "the user asked for something that cannot work".

They sit at the bottom of the package (nothing here imports mae_jax), so
every layer can raise them. `mae_jax.main` prints their message alone and
exits with status 2, without a traceback: the message says what was wrong
and what to do. Any other exception is a bug and keeps its traceback.

All subclass `ValueError`, so callers and tests that expect a ValueError
keep working.
"""

import signal

USAGE_EXIT_CODE = 2  # as absl's and argparse's usage errors
# Stopped by Ctrl-C: 128 + SIGINT, as a shell reports it (every command line).
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT


class UserError(ValueError):
  """A mistake in what was asked for: config, data, checkpoint or workdir."""


class ConfigError(UserError):
  """A config value or combination of values that cannot be run."""


class CheckpointError(UserError):
  """A checkpoint that is missing, incomplete, or of another model."""


class WorkdirError(UserError):
  """A workdir that cannot be written, or that holds another experiment."""


class UsageError(UserError):
  """A command-line flag or environment variable that cannot work (--topology,
  --num_slices, XLA_CLIENT_MEM_FRACTION, ...)."""
