"""One run per workdir: a lease the job start takes and renews, and gives back at the end.

Launching the same command twice by mistake (a second terminal, a launcher
rerun while the first run still lives) would otherwise have two runs write
the same checkpoints and metrics. The lease is a small JSON record in the
workdir (`lease.json`): who holds it (host, process id, a run id), since
when, and until when. The job start takes it, or refuses in one line naming
the holder; a thread renews it every `ttl / 4` seconds; the end of the job
deletes it. A run that was killed cannot give it back: its lease expires
`ttl` seconds after the last renewal (at once when the holder was on this
host and its process is gone), so a killed run never locks its workdir.

Every change is a compare-and-swap, so two starts at the same moment cannot
both win: on a local disk under an exclusive `flock`, on `gs://` with
Cloud Storage's generation preconditions (create only if absent, replace or
delete only the generation read). Only process 0 of a multi-host run takes
the lease, for the whole run; the other hosts learn the outcome from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from absl import logging

from mae_jax import storage
from mae_jax.errors import WorkdirError

LEASE_FILE = "lease.json"
DEFAULT_TTL_SECONDS = 120.0


class LocalStore:
  """The lease record in a local directory; each change holds an exclusive flock."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LEASE_FILE)
    self.lock_path = self.path + ".lock"

  @contextlib.contextmanager
  def _locked(self):
    import fcntl

    with open(self.lock_path, "a") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      yield

  def _read(self) -> tuple[dict | None, Any]:
    try:
      with open(self.path) as f:
        text = f.read()
    except FileNotFoundError:
      return None, None
    try:
      return json.loads(text), text
    except json.JSONDecodeError:  # a torn write of a killed run: no valid holder
      return None, text

  def read(self) -> tuple[dict | None, Any]:
    with self._locked():
      return self._read()

  def write(self, record: dict, version: Any) -> bool:
    """Writes `record` if the stored version is still `version` (None: absent)."""
    with self._locked():
      if self._read()[1] != version:
        return False
      temporary = f"{self.path}.{os.getpid()}.tmp"
      with open(temporary, "w") as f:
        f.write(json.dumps(record))
      os.replace(temporary, self.path)
      return True

  def delete(self, version: Any) -> bool:
    with self._locked():
      if self._read()[1] != version:
        return False
      os.remove(self.path)
      return True


class CloudStorageStore:
  """The lease record as a Cloud Storage object; versions are its generations."""

  def __init__(self, workdir: str, client=None):
    bucket, _, prefix = workdir.removeprefix("gs://").partition("/")
    if client is None:
      from google.cloud import storage

      client = storage.Client()
    self.blob_name = f"{prefix.rstrip('/')}/{LEASE_FILE}" if prefix else LEASE_FILE
    self.bucket = client.bucket(bucket)

  def read(self) -> tuple[dict | None, Any]:
    blob = self.bucket.get_blob(self.blob_name)
    if blob is None:
      return None, None
    try:
      return json.loads(blob.download_as_text(if_generation_match=blob.generation)), blob.generation
    except Exception as error:  # changed since listed, or not JSON: read again next time
      if _precondition_failed(error):
        return self.read()
      return None, blob.generation

  def write(self, record: dict, version: Any) -> bool:
    blob = self.bucket.blob(self.blob_name)
    try:
      blob.upload_from_string(
        json.dumps(record),
        content_type="application/json",
        if_generation_match=0 if version is None else version,
      )
    except Exception as error:
      if _precondition_failed(error):
        return False
      raise
    return True

  def delete(self, version: Any) -> bool:
    try:
      self.bucket.blob(self.blob_name).delete(if_generation_match=version)
    except Exception as error:
      if _precondition_failed(error) or type(error).__name__ == "NotFound":
        return False
      raise
    return True


def _precondition_failed(error: Exception) -> bool:
  return type(error).__name__ == "PreconditionFailed" or getattr(error, "code", None) == 412


def store_for(workdir: str):
  return CloudStorageStore(workdir) if storage.is_bucket(workdir) else LocalStore(workdir)


@dataclasses.dataclass
class Lease:
  """This run's hold on a workdir: `renew()` extends it, `release()` ends it."""

  store: Any
  record: dict
  ttl: float
  clock: Callable[[], float] = time.time
  lost: bool = False

  def renew(self) -> bool:
    current, version = self.store.read()
    if not current or current.get("run_id") != self.record["run_id"]:
      if not self.lost:
        logging.error("The workdir lease was lost (now held by %s).", describe(current))
      self.lost = True
      return False
    record = dict(self.record, expires=self.clock() + self.ttl)
    if self.store.write(record, version):
      self.record = record
    return True

  def release(self) -> None:
    current, version = self.store.read()
    if current and current.get("run_id") == self.record["run_id"]:
      self.store.delete(version)


def describe(record: dict | None) -> str:
  if not record:
    return "nobody"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
  return f"host {record.get('host')} process {record.get('pid')} since {since}"


def holder_is_gone(record: dict, now: float) -> bool:
  """The lease expired, or its holder was a process of this host that has ended."""
  if record.get("expires", 0) <= now:
    return True
  if record.get("host") == socket.gethostname():
    try:
      os.kill(int(record.get("pid", -1)), 0)
    except ProcessLookupError:
      return True
    except (PermissionError, ValueError, OverflowError):
      return False
  return False


def acquire(
  workdir: str, *, store=None, ttl: float = DEFAULT_TTL_SECONDS, clock=time.time
) -> Lease:
  """Takes the workdir for this run, or raises WorkdirError naming its holder."""
  store = store or store_for(workdir)
  now = clock()
  current, version = store.read()
  if current and not holder_is_gone(current, now):
    raise WorkdirError(
      f"--workdir={workdir} is in use by another run ({describe(current)}): one run per "
      f"workdir. Stop that run first, or use another --workdir; a run that was killed "
      f"frees it {ttl:.0f} s after its last sign of life."
    )
  record = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "run_id": uuid.uuid4().hex,
    "since": now,
    "expires": now + ttl,
  }
  if not store.write(record, version):
    holder, _ = store.read()
    raise WorkdirError(
      f"--workdir={workdir} was taken by another run starting at the same moment "
      f"({describe(holder)}): one run per workdir."
    )
  return Lease(store=store, record=record, ttl=ttl, clock=clock)


@contextlib.contextmanager
def holding(workdir: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> Iterator[Lease | None]:
  """The workdir's lease for the body: taken by process 0 (the others learn
  whether it was), renewed in the background, given back at the end."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from mae_jax.core.workdir import check_workdir_writable

  lease, error = None, None
  if jax.process_index() == 0:
    try:
      check_workdir_writable(workdir)  # also creates it
      lease = acquire(workdir, ttl=ttl)
    except WorkdirError as refused:
      error = refused
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(lease is not None))
    if not taken and error is None:
      error = WorkdirError(
        f"--workdir={workdir} is in use by another run (process 0's log names it)."
      )
  if error is not None:
    raise error
  stop = threading.Event()
  renewer = None
  if lease is not None:

    def renew_until_stopped():
      while not stop.wait(ttl / 4):
        try:
          lease.renew()
        except Exception as failure:  # a flaky bucket: try again next time
          logging.warning("Could not renew the workdir lease: %s", failure)

    renewer = threading.Thread(target=renew_until_stopped, name="workdir-lease", daemon=True)
    renewer.start()
  try:
    yield lease
  finally:
    stop.set()
    if renewer is not None:
      renewer.join()
      try:
        lease.release()
      except Exception as failure:
        logging.warning("Could not give back the workdir lease: %s", failure)
