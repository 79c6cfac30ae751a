"""Stopping cleanly when the scheduler wants the machine back, or the user
presses Ctrl-C.

A Cloud TPU VM or a SLURM job gets SIGTERM some time before it is killed.
On one process the handler only notes it (`mae_jax.stop_notice`) and the
loop reads the note after each step, or before its first one (a notice
during start-up: nothing new to save, exit 75 at once); across processes JAX's
coordination service catches it and `reached_preemption_sync_point` tells
every host the same step at which to stop, so they all save that step
together. Either way the loop saves a checkpoint, waits for it to be
complete, and the job exits with `PREEMPTED_EXIT_CODE`: "preempted,
resumable" — rerunning the same command continues from that step.

Ctrl-C (SIGINT) on one process does the same at the end of the current
step, but exits with `mae_jax.errors.INTERRUPTED_EXIT_CODE` (128 + SIGINT, as a shell
reports it), which the launchers do not rerun: a person stopped the job.
A second Ctrl-C stops at once (KeyboardInterrupt; mae_jax.main says which
checkpoint is the last). Across processes Ctrl-C is not synchronised (a
host stopping alone would leave the others waiting): it stops at once.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from mae_jax import stop_notice
from mae_jax.core import checkpointing

# EX_TEMPFAIL from sysexits.h: a temporary failure, try again.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Raised after the preemption (or Ctrl-C) checkpoint is complete."""

  def __init__(
    self, step: int, checkpoint_dir: str, interrupted: bool = False, *, saved: bool = True
  ):
    self.step, self.checkpoint_dir, self.interrupted = step, checkpoint_dir, interrupted
    if saved:
      text = (
        f"at step {step}: checkpoint saved in {checkpoint_dir}; rerun the same command to resume."
      )
    else:
      text = (
        f"during start-up, before step {step + 1}: nothing new to save; rerun the same "
        f"command to resume from the last complete checkpoint in {checkpoint_dir} (if any)."
      )
    super().__init__(f"{'interrupted' if interrupted else 'preempted'} {text}")


def save_and_stop(mngr, step: int, log, interrupted: bool = False) -> None:
  """The preemption exit of every training loop, once it has started the
  save of `step`: wait until that save is complete, log it, raise Preempted."""
  checkpointing.wait_for_saves(mngr)
  log(f"{'Interrupted' if interrupted else 'Preempted'} at step {step}: checkpoint complete.")
  stop_notice.clear()  # answered
  raise Preempted(step, str(mngr.directory), interrupted)


def stop_before_the_first_step(step: int, checkpoint_dir: str) -> None:
  """A notice that came during start-up (one process): the state is still
  the checkpoint it was restored from, so nothing is saved."""
  if jax.process_count() == 1 and stop_notice.received():
    stop_notice.clear()
    raise Preempted(step, checkpoint_dir, saved=False)


class PreemptionWatcher:
  """`reached(step)` is True once a preemption notice (or, on one process,
  a first Ctrl-C) has arrived; `interrupted` says it was Ctrl-C."""

  def __init__(self):
    self._signalled = threading.Event()
    self.interrupted = False
    self._previous_handlers = {}
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      handlers = {signal.SIGTERM: self._on_sigterm}  # a note, as mae_jax.main's
      # A process started with Ctrl-C ignored (a launcher's background job:
      # launch/resumable.sh turns it into SIGTERM) keeps ignoring it.
      if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        handlers[signal.SIGINT] = self._on_sigint
      for signum, handler in handlers.items():
        self._previous_handlers[signum] = signal.signal(signum, handler)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    stop_notice.note()

  def _on_sigint(self, signum, frame):
    del signum, frame
    if self._signalled.is_set():  # the second Ctrl-C: stop now
      raise KeyboardInterrupt
    self.interrupted = True
    self._signalled.set()
    # os.write, not print: the handler may run in the middle of a print.
    os.write(
      2, b"\nCtrl-C: saving a checkpoint after this step, then stopping (again: stop now).\n"
    )

  def reached(self, step: int) -> bool:
    if self._multi_process:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled in this runtime
        return False
    return self._signalled.is_set() or stop_notice.received()

  def close(self) -> None:
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers = {}
