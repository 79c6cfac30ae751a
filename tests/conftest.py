"""Test session set-up (8 fake CPU devices, a compilation cache) and shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Eight fake CPU devices for the sharding tests; must precede the first JAX
# import of the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

# One persistent XLA compilation cache per test session, shared by the xdist
# workers and by the subprocesses tests start (both inherit the environment
# of the process that loads this file first): many tests compile the same
# tiny train step, and compiling is most of their time. A fresh folder each
# session, removed at its end, so no test reads a program from another run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="mae_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

import pytest


@pytest.fixture(scope="session")
def tfrecord_digits_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the digits as TFRecord (a plain `tfds build`)."""
  import tfds_datasets

  data_dir = str(tmp_path_factory.mktemp("tfds_tfrecord"))
  tfds_datasets.build(data_dir, "tfrecord")
  return data_dir


@pytest.fixture(scope="session")
def array_record_digits_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the digits as ArrayRecord."""
  import tfds_datasets

  data_dir = str(tmp_path_factory.mktemp("tfds_array_record"))
  tfds_datasets.build(data_dir, "array_record")
  return data_dir
