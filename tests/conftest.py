"""Test session set-up (8 fake CPU devices) and shared fixtures."""

from __future__ import annotations

import os

# Eight fake CPU devices for the sharding tests; must precede the first JAX
# import of the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir with the bundled digits built once per test session
  (a few seconds), so no test writes to ~/tensorflow_datasets."""
  from mae_jax.data import digits

  data_dir = str(tmp_path_factory.mktemp("tfds_digits"))
  digits.load_builder(data_dir)
  return data_dir
