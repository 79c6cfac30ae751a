"""The storage tests' network guard, in every Python process they start.

Python imports `sitecustomize` at start-up from the path; the storage
fixture puts this folder on PYTHONPATH and names a file in
MAE_JAX_LOOPBACK_ONLY. Then a connection to, or a name look-up of, any
address other than loopback is refused (OSError) and written to that
file, which the fixture reads at the end of the test: a test whose code
tried to leave the machine fails, even when the library swallowed the
error. Loaded by the test process itself too (tests/conftest.py).
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback_host(host) -> bool:
  if host is None:
    return True
  if isinstance(host, bytes):
    host = host.decode()
  host = str(host).strip("[]")
  if host.lower() in _LOCAL_NAMES:
    return True
  try:
    return ipaddress.ip_address(host.split("%")[0]).is_loopback
  except ValueError:
    return False


def _refuse(what: str) -> None:
  path = os.environ.get("MAE_JAX_LOOPBACK_ONLY")
  if path:
    with open(path, "a") as f:
      f.write(f"{os.getpid()} {what}\n")
  raise ConnectionRefusedError(f"the storage tests allow loopback only: {what}")


def install() -> None:
  if getattr(socket, "_mae_jax_loopback_only", False):
    return
  socket._mae_jax_loopback_only = True
  original_connect = socket.socket.connect
  original_connect_ex = socket.socket.connect_ex
  original_getaddrinfo = socket.getaddrinfo

  def allowed(sock, address) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
      return True  # Unix sockets, netlink: not a network
    return _is_loopback_host(address[0])

  def connect(self, address):
    if not allowed(self, address):
      _refuse(f"connect {address!r}")
    return original_connect(self, address)

  def connect_ex(self, address):
    if not allowed(self, address):
      _refuse(f"connect {address!r}")
    return original_connect_ex(self, address)

  def getaddrinfo(host, *args, **kwargs):
    if not _is_loopback_host(host):
      _refuse(f"look up {host!r}")
    return original_getaddrinfo(host, *args, **kwargs)

  socket.socket.connect = connect
  socket.socket.connect_ex = connect_ex
  socket.getaddrinfo = getaddrinfo


if os.environ.get("MAE_JAX_LOOPBACK_ONLY"):
  install()
