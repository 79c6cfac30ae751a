"""The one record that a stop was asked for (SIGTERM: a preemption notice).

A Cloud TPU maintenance event or a scheduler's requeue sends SIGTERM
whenever it comes: during the imports, the start-up, a compile, a step, a
save or the final evaluation. The handler only notes it here: it never
raises into whatever code the signal interrupted (a JAX garbage-collection
callback swallows such an exception; an exception unwinding through a
compile or a save in flight can crash the process). The code reads the
note where stopping is safe: the step loop after each step (save, then
exit 75), and the job start before the loop (nothing to save, exit 75).
A run that finishes with the note unread ends as finished (exit 0, the
final line): its last checkpoint is already written.

This module imports nothing heavy, so `mae_jax.main` installs the handler
before it imports JAX. On several processes JAX's coordination service
takes SIGTERM over (core.preemption).
"""

from __future__ import annotations

import signal
import threading

_received = threading.Event()


def _note(signum, frame) -> None:
  del signum, frame
  _received.set()


def install() -> None:
  """From now on SIGTERM is noted, not fatal (main thread only)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _note)


def note() -> None:
  """Records a stop request that arrived another way (a signal handler of
  the step loop's)."""
  _received.set()


def received() -> bool:
  return _received.is_set()


def clear() -> None:
  """Forgets a notice (a new job in the same process; tests)."""
  _received.clear()
