"""Noticing a lost host in a multi-process run, and exiting resumably.

When one process of a multi-host job dies (SIGKILL, a kernel panic, the
machine taken away), the others stop at their next collective: on CPU Gloo
raises at once, on GPU (NCCL) and TPU a collective may simply wait. JAX's
coordination service notices later (its heartbeat timeout) and aborts the
survivors with a C++ stack dump, status 134, which says nothing of what to
do next.

`HostWatch` runs beside the job on every process: a daemon thread that
publishes a heartbeat counter in the coordination service's key-value store
every `interval` seconds and reads every other process's counter. A process
whose counter has not moved for `timeout` seconds is lost; an unreachable
coordination service means process 0 (which hosts it) is lost. The thread
then prints one line naming the lost process and the last complete
checkpoint, and ends this process with status 75 (resumable: rerun the same
command on every host) without the interpreter's shutdown, whose distributed
barrier would wait for the lost process and abort.

JAX's own heartbeat timeout is set longer than ours (`jax_heartbeat_timeout`)
so that this line, not the abort, is what a survivor leaves behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from mae_jax.core.preemption import PREEMPTED_EXIT_CODE

DEFAULT_TIMEOUT_SECONDS = 60.0
_KEY = "mae_jax/heartbeat/{}"
_DONE = "done"  # a finished process's last heartbeat: it is no longer waited for


def jax_heartbeat_timeout(timeout: float) -> int:
  """JAX's coordination-service heartbeat timeout for our `timeout`: long
  enough that our watch always speaks first, never below JAX's default."""
  return max(100, int(timeout * 2) + 30)


def last_complete_checkpoint(checkpoint_dir: str) -> str:
  """'step N in DIR' for the newest finalised checkpoint, read from storage
  without the checkpoint manager (whose start-up may wait at a barrier for
  the lost process)."""
  from orbax.checkpoint.path import step as step_lib

  try:
    steps = step_lib.checkpoint_steps(checkpoint_dir)
  except Exception:  # a missing or unreadable directory: none to vouch for
    steps = []
  if not steps:
    return f"none in {checkpoint_dir} (a rerun starts from step 0)"
  return f"step {max(steps)} in {checkpoint_dir}"


class HostWatch:
  """One heartbeat round per `interval` on a daemon thread; `check()` is one
  round, for tests with a fake client and clock."""

  def __init__(
    self,
    client,
    process_id: int,
    num_processes: int,
    timeout: float,
    checkpoint_dir: str,
    *,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_loss: Callable[[str], None] | None = None,
  ):
    self._client = client
    self._me = process_id
    self._timeout = float(timeout)
    self._interval = interval if interval is not None else max(0.2, self._timeout / 10)
    self._checkpoint_dir = checkpoint_dir
    self._clock = clock
    self._on_loss = on_loss or exit_resumable
    self._beat = 0
    start = clock()
    # Peer -> (its last counter, when we first saw that counter).
    self._seen: dict[int, tuple[str | None, float]] = {
      peer: (None, start) for peer in range(num_processes) if peer != process_id
    }
    self._stop = threading.Event()
    self._lost = threading.Event()
    self._thread: threading.Thread | None = None

  def check(self) -> int | None:
    """Publishes our heartbeat and reads the others': the lost process, or None."""
    now = self._clock()
    self._beat += 1
    try:
      self._client.key_value_set(_KEY.format(self._me), str(self._beat), allow_overwrite=True)
    except Exception:  # the coordination service lives in process 0
      return 0 if self._me != 0 else None
    for peer, (counter, since) in list(self._seen.items()):
      try:
        value = self._client.key_value_try_get(_KEY.format(peer))
      except Exception:  # not published yet: the clock started at our start
        value = None
      if value == _DONE:
        del self._seen[peer]
      elif value != counter:
        self._seen[peer] = (value, now)
      elif now - since > self._timeout:
        return peer
    return None

  def loss_message(self, peer: int) -> str:
    return (
      f"HOST LOST: process {peer} stopped answering (no heartbeat for "
      f"{self._timeout:g} s). Last complete checkpoint: "
      f"{last_complete_checkpoint(self._checkpoint_dir)}. Exit {PREEMPTED_EXIT_CODE}: "
      "rerun the same command on every host to resume from it."
    )

  def _run(self) -> None:
    while not self._stop.wait(self._interval):
      peer = self.check()
      if peer is not None and not self._stop.is_set():
        self._on_loss(self.loss_message(peer))  # exits, unless a test's
        self._lost.set()
        return

  def start(self) -> HostWatch:
    self._thread = threading.Thread(target=self._run, name="mae_jax-host-watch", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    """The job ended on this process: stop watching, tell the others."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    try:
      self._client.key_value_set(_KEY.format(self._me), _DONE, allow_overwrite=True)
    except Exception:
      pass

  def await_loss(self) -> bool:
    """After an unexpected error: give the watch time to find a lost host (it
    then ends the process itself). False when every host still answers."""
    return self._lost.wait(self._timeout + 3 * self._interval)


def exit_resumable(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Not sys.exit: the main thread may be waiting in a collective for the lost
  # host, and the interpreter's shutdown would wait at JAX's barrier for it.
  os._exit(PREEMPTED_EXIT_CODE)


def start(timeout: float, checkpoint_dir: str) -> HostWatch | None:
  """The watch of this process when the run spans processes, else None."""
  import jax
  from jax._src import distributed  # the client is not public API (jax 0.10-0.12)

  if jax.process_count() == 1 or distributed.global_state.client is None:
    return None
  return HostWatch(
    distributed.global_state.client,
    jax.process_index(),
    jax.process_count(),
    timeout,
    checkpoint_dir,
  ).start()
