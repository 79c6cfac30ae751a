"""The persistent XLA compilation cache of a run (`config.compilation_cache`).

A restarted job (after a preemption, a host loss, a requeue) compiles the
same programs again: minutes for a large model on a pod. With the cache,
JAX stores each compiled executable under a key of the program, the
devices and the versions, and a restart loads it instead. "auto" puts it
inside the workdir, which the restart reuses by definition; any path
JAX's cache accepts works, `gs://` included. Entries are written by
process 0 and read by all.

Set before the first compilation: main.py calls `enable` before the job.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from mae_jax import storage
from mae_jax.errors import ConfigError

AUTO = "auto"
FOLDER = "compilation_cache"


def cache_dir(setting, workdir: str) -> str | None:
  """Where the cache goes for `setting` ("auto", a path, "" = off)."""
  if not isinstance(setting, str):
    raise ConfigError(
      f"config.compilation_cache={setting!r}: expected 'auto' (inside the workdir), "
      "a path (gs:// allowed), or '' (off)."
    )
  if setting == AUTO:
    return storage.join(workdir, FOLDER)
  return setting or None


def enable(setting, workdir: str) -> str | None:
  """Turns the cache on for this process; returns its directory (None: off).

  A JAX_COMPILATION_CACHE_DIR already in the environment (JAX reads it
  itself) is left as it is: the caller chose a cache for every job.
  """
  chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if chosen:
    logging.info("XLA compilation cache: %s (from JAX_COMPILATION_CACHE_DIR).", chosen)
    return chosen
  directory = cache_dir(setting, workdir)
  if directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    logging.info("XLA compilation cache: %s.", directory)
  return directory
