"""SIGTERM at any moment of a run ends it with 75 and one PREEMPTED line
(the run resumes), or with 0 and the final line once its steps are done:
never ignored, never a crash (mae_jax.stop_notice).

Each case starts the real command and sends SIGTERM when the run reaches
a moment, told by what it prints (or, for the imports, by the moment the
process's SIGTERM handler is in place, read from /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from mae_jax.core import lease
from mae_jax.core.preemption import PREEMPTED_EXIT_CODE
from tests.helpers import REPO, environment, with_sigint
from tests.helpers import main_command as command

STEPS = [
  "--config.num_train_steps=60",
  "--config.log_every_steps=5",
  "--config.eval_every_steps=30",
  "--config.checkpoint_every_steps=30",
]
FINISHED = "Pretraining finished at step 60"


def catches_sigterm(pid: int) -> bool:
  """The process has a handler for SIGTERM (SigCgt in /proc/PID/status)."""
  try:
    with open(f"/proc/{pid}/status") as f:
      caught = next(line for line in f if line.startswith("SigCgt:"))
  except (OSError, StopIteration):
    return False
  return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


# moment -> (the output that marks it, or None for "the handler is in place";
# the exit statuses allowed).
MOMENTS = {
  "imports": (None, {PREEMPTED_EXIT_CODE}),
  "start-up": ("processes,", {PREEMPTED_EXIT_CODE}),
  "workdir and plan": ("Run info:", {PREEMPTED_EXIT_CODE}),
  "initialising and compiling": ("Initialising from scratch", {PREEMPTED_EXIT_CODE}),
  "steps": ("step 5/60", {PREEMPTED_EXIT_CODE}),
  "evaluation, then a save": ("step 30/60", {PREEMPTED_EXIT_CODE}),
  # The last step's evaluation and save: stopped after it (75), or, if the
  # note is read only after the loop, finished (0).
  "the last evaluation": ("step 60/60", {PREEMPTED_EXIT_CODE, 0}),
  "teardown": (FINISHED, {0}),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_sigterm_at_any_moment_is_answered(tmp_path, moment):
  marker, allowed = MOMENTS[moment]
  env = environment(1)
  env["PYTHONUNBUFFERED"] = "1"
  process = subprocess.Popen(
    with_sigint(command(tmp_path / "run", *STEPS)),
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  lines = []
  try:
    if marker is None:
      deadline = time.time() + 60
      while not catches_sigterm(process.pid) and time.time() < deadline:
        time.sleep(0.001)
      process.send_signal(signal.SIGTERM)
    else:
      for line in process.stdout:
        lines.append(line)
        if marker in line:
          process.send_signal(signal.SIGTERM)
          break
    output = "".join(lines) + process.communicate(timeout=300)[0]
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode in allowed, output[-3000:]
  for crash in ("Traceback", "Exception ignored", "Fatal Python error"):
    assert crash not in output, output[-3000:]
  assert not os.path.exists(tmp_path / "run" / lease.LEASE_FILE)  # given back
  if process.returncode == PREEMPTED_EXIT_CODE:
    last = output.strip().splitlines()[-1]
    assert last.startswith("PREEMPTED: preempted "), output[-3000:]
    assert "rerun the same command" in last
  else:
    assert FINISHED in output
