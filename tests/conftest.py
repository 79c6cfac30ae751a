"""Test session set-up (8 fake CPU devices, a compilation cache) and shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
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


@pytest.fixture(scope="session")
def storage_server(tmp_path_factory):
  """fake-gcs-server on 127.0.0.1 (benchmarks/storage_server.py), one per test
  worker, with every Cloud Storage client of this process and of the
  processes tests start pointed at it, and the loopback guard on."""
  from benchmarks import storage_server as server_lib

  guard_dir = os.path.join(os.path.dirname(__file__), "loopback_only")
  root = tmp_path_factory.mktemp("storage_server")
  server = server_lib.StorageServer(str(root / "data"), buckets=())
  violations = root / "non_loopback_connections.txt"
  violations.touch()
  recorder = server_lib.OutboundRecorder(str(violations))
  os.environ.update(server_lib.environment(server.url, str(violations), recorder.url, guard_dir))
  sys.path.insert(0, guard_dir)
  import sitecustomize  # tests/loopback_only: the guard, in this process too

  sitecustomize.install()
  yield server, violations
  server.stop()
  recorder.stop()


_bucket_count = 0


@pytest.fixture
def bucket(storage_server) -> str:
  """A new, empty bucket on the test server: "gs://NAME". The test fails if
  any process it started tried to reach an address other than loopback."""
  global _bucket_count
  from google.cloud import storage

  server, violations = storage_server
  _bucket_count += 1
  name = f"mae-test-{os.getpid()}-{_bucket_count}"
  storage.Client().create_bucket(name)
  seen = violations.read_text()
  yield f"gs://{name}"
  new = violations.read_text()[len(seen) :]
  assert not new, f"connections outside 127.0.0.1 were attempted:\n{new}"
