"""Test session set-up (8 fake CPU devices) and shared fixtures."""

from __future__ import annotations

import os

# Eight fake CPU devices for the sharding tests; must precede the first JAX
# import of the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

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
