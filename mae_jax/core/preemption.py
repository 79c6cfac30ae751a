"""Stopping cleanly when the scheduler wants the machine back.

A Cloud TPU VM or a SLURM job gets SIGTERM some time before it is killed.
On one process we catch SIGTERM ourselves; across processes JAX's
coordination service catches it and `reached_preemption_sync_point` tells
every host the same step at which to stop, so they all save that step
together. Either way the loop saves a checkpoint, waits for it to be
complete, and the job exits with `PREEMPTED_EXIT_CODE`: "preempted,
resumable" — rerunning the same command continues from that step.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

from mae_jax.core import checkpointing

# EX_TEMPFAIL from sysexits.h: a temporary failure, try again.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Raised after the preemption checkpoint is complete."""

  def __init__(self, step: int, checkpoint_dir: str):
    self.step, self.checkpoint_dir = step, checkpoint_dir
    super().__init__(
      f"preempted at step {step}: checkpoint saved in {checkpoint_dir}; "
      "rerun the same command to resume."
    )


def save_and_stop(mngr, step: int, log) -> None:
  """The preemption exit of every training loop, once it has started the
  save of `step`: wait until that save is complete, log it, raise Preempted."""
  checkpointing.wait_for_saves(mngr)
  log(f"Preempted at step {step}: checkpoint complete.")
  raise Preempted(step, str(mngr.directory))


class PreemptionWatcher:
  """`reached(step)` is True once a preemption notice has arrived."""

  def __init__(self):
    self._signalled = threading.Event()
    self._previous_handler = None
    self._multi_process = jax.process_count() > 1
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled.set()

  def reached(self, step: int) -> bool:
    if self._multi_process:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled in this runtime
        return False
    return self._signalled.is_set()

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
