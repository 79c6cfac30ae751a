"""One run per workdir (mae_jax.core.lease).

The lease logic runs against the local store and a stand-in for Cloud
Storage with its generation preconditions; the command line refuses a held
workdir in one line before compiling. (A SIGTERM during start-up, and the
lease given back after it: tests/test_sigterm_moments.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mae_jax.core import lease
from mae_jax.errors import WorkdirError
from tests.helpers import REPO, environment
from tests.helpers import main_command as command


class Clock:
  def __init__(self):
    self.now = 1_000_000.0

  def __call__(self):
    return self.now


class PreconditionFailed(Exception):
  code = 412


class FakeBlob:
  """A Cloud Storage object's generation semantics (if_generation_match)."""

  def __init__(self, bucket, name):
    self.bucket, self.name = bucket, name

  @property
  def generation(self):
    return self.bucket.objects[self.name][1]

  def download_as_text(self, if_generation_match=None):
    text, generation = self.bucket.objects[self.name]
    if if_generation_match is not None and if_generation_match != generation:
      raise PreconditionFailed()
    return text

  def upload_from_string(self, text, content_type=None, if_generation_match=None):
    current = self.bucket.objects.get(self.name, (None, 0))[1]
    if if_generation_match is not None and if_generation_match != current:
      raise PreconditionFailed()
    self.bucket.generation += 1
    self.bucket.objects[self.name] = (text, self.bucket.generation)

  def delete(self, if_generation_match=None):
    if self.bucket.objects.get(self.name, (None, 0))[1] != if_generation_match:
      raise PreconditionFailed()
    del self.bucket.objects[self.name]


class FakeBucket:
  def __init__(self):
    self.objects, self.generation = {}, 0

  def blob(self, name):
    return FakeBlob(self, name)

  def get_blob(self, name):
    return FakeBlob(self, name) if name in self.objects else None


class FakeClient:
  def __init__(self):
    self.buckets = {}

  def bucket(self, name):
    return self.buckets.setdefault(name, FakeBucket())


def stores(tmp_path):
  client = FakeClient()
  return {
    "local": lambda: lease.LocalStore(str(tmp_path)),
    "gcs": lambda: lease.CloudStorageStore("gs://bucket/runs/a", client=client),
  }


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_a_second_run_is_refused_until_the_first_ends_or_expires(tmp_path, kind):
  make_store, clock = stores(tmp_path)[kind], Clock()
  first = lease.acquire("w", store=make_store(), ttl=60, clock=clock)
  with pytest.raises(WorkdirError, match=f"in use by another run \\(host {socket.gethostname()} "):
    lease.acquire("w", store=make_store(), ttl=60, clock=clock)
  clock.now += 45
  assert first.renew()  # renewed: still held 59 s later
  clock.now += 59
  with pytest.raises(WorkdirError):
    lease.acquire("w", store=make_store(), ttl=60, clock=clock)
  first.release()  # given back: the next run starts at once
  second = lease.acquire("w", store=make_store(), ttl=60, clock=clock)
  clock.now += 61  # the second run was killed: no renewal for longer than the ttl
  third = lease.acquire("w", store=make_store(), ttl=60, clock=clock)
  assert not second.renew() and second.lost  # it learns it lost the workdir
  second.release()  # and does not delete the new holder's lease
  assert make_store().read()[0]["run_id"] == third.record["run_id"]


@pytest.mark.parametrize("kind", ["local", "gcs"])
def test_of_two_starts_at_the_same_moment_one_wins(tmp_path, kind):
  make_store = stores(tmp_path)[kind]
  store_a, store_b = make_store(), make_store()
  record, version = store_a.read()
  assert store_b.read() == (record, version)  # both saw a free workdir
  assert store_a.write({"run_id": "a"}, version)
  assert not store_b.write({"run_id": "b"}, version)  # the compare-and-swap refuses
  assert make_store().read()[0] == {"run_id": "a"}


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  store = lease.LocalStore(str(tmp_path))
  now = time.time()
  record = {"host": socket.gethostname(), "pid": dead.pid, "run_id": "x", "since": now}
  store.write(dict(record, expires=now + 600), None)
  taken = lease.acquire(str(tmp_path), store=store)
  assert taken.record["pid"] == os.getpid()


def test_the_command_line_refuses_a_held_workdir_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  now = time.time()
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "run_id": "other", "since": now}
  (workdir / lease.LEASE_FILE).write_text(json.dumps(dict(holder, expires=now + 600)))
  result = subprocess.run(
    command(workdir), cwd=REPO, env=environment(1), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"in use by another run (host {socket.gethostname()} process {os.getpid()}" in (
    result.stderr
  )
  assert "Traceback" not in result.stderr
  assert not (workdir / "checkpoints").exists()  # nothing of the other run's was touched
  assert json.loads((workdir / lease.LEASE_FILE).read_text())["run_id"] == "other"
