"""A checkpoint that cannot be written (disk full, quota, permissions) stops
the run with a clear error; the checkpoints saved before it stay intact and a
rerun resumes from them.

Two ways in: a write failure injected into orbax's save (always runs), and a
real full disk, a small tmpfs filled up under the running command (needs
permission to mount, which a root CI container has).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mae_jax.core import checkpointing
from mae_jax.jobs.pretrain import train_and_evaluate
from mae_jax.main import SAVE_FAILED_EXIT_CODE
from tests.helpers import final_params, tiny_config
from tests.test_main_cli import REPO, command, committed_steps, environment


class _DiskFull:
  """A commit future that fails like a write to a full disk."""

  def result(self, timeout=None):
    raise OSError(errno.ENOSPC, "No space left on device")


def _fail_saves_from(monkeypatch, first_failing_step: int) -> None:
  """Makes every save of step >= `first_failing_step` fail in orbax's
  background commit, where a real disk-full error surfaces."""
  original = ocp.PyTreeCheckpointHandler.async_save

  async def async_save(self, directory, *args, **kwargs):
    futures = list(await original(self, directory, *args, **kwargs) or [])
    step = int(os.path.basename(os.path.dirname(str(directory))).split(".")[0])
    return futures + [_DiskFull()] if step >= first_failing_step else futures

  monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", async_save)


def test_failed_save_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
  config = tiny_config(num_train_steps=9, checkpoint_every_steps=3, log_every_steps=3)
  workdir = str(tmp_path / "run")
  _fail_saves_from(monkeypatch, 6)
  with pytest.raises(checkpointing.CheckpointSaveError) as failure:
    train_and_evaluate(config, workdir)
  message = str(failure.value)
  assert os.path.join(workdir, "checkpoints") in message
  assert "No space left on device" in message and "disk" in message
  assert "steps [3]" in message and "resumes from step 3" in message
  assert committed_steps(workdir) == [3]
  at_step_3 = final_params(workdir, 3)

  # Space is back: the same call resumes from the intact step 3 (resuming
  # exactly is test_pretrain's and test_main_cli's business).
  monkeypatch.undo()
  train_and_evaluate(config, workdir)
  info = json.load(open(os.path.join(workdir, "run_info.json")))
  assert info["resume"] == "resuming from step 3"
  assert committed_steps(workdir)[-1] == 9
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir, 3), at_step_3)


def test_failure_message_without_any_complete_checkpoint(tmp_path):
  failure = checkpointing.save_failure(str(tmp_path), PermissionError(13, "Permission denied"))
  assert "No complete checkpoint had been written there yet" in str(failure)
  assert "starts from scratch" in str(failure) and "permissions" in str(failure)


def _mount_tmpfs(path: str, size: str) -> None:
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True, text=True
  )
  if result.returncode != 0:
    pytest.skip(
      f"cannot mount a tmpfs here ({result.stderr.strip()}); the injected "
      "failure test covers the same path"
    )


def _fill(directory: str) -> str:
  """Writes a file until the filesystem is full; returns its path."""
  path = os.path.join(directory, "filler")
  chunk = b"\0" * (1 << 20)
  with open(path, "wb", buffering=0) as f:
    try:
      while True:
        f.write(chunk)
    except OSError as error:
      assert error.errno == errno.ENOSPC, error
  for size in (1 << 16, 1 << 12, 1):  # the last partial pages too
    with open(path, "ab", buffering=0) as f:
      try:
        while True:
          f.write(b"\0" * size)
      except OSError:
        pass
  return path


def test_real_full_disk_under_the_command(tmp_path):
  mount_point = str(tmp_path / "small_disk")
  _mount_tmpfs(mount_point, "64M")
  try:
    workdir = os.path.join(mount_point, "run")
    steps = [
      "--config.num_train_steps=400",
      "--config.checkpoint_every_steps=20",
      "--config.eval_every_steps=1000",
    ]
    process = subprocess.Popen(
      command(workdir, *steps),
      cwd=REPO,
      env=environment(1),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    try:
      deadline = time.time() + 300
      while not committed_steps(workdir) and time.time() < deadline:
        time.sleep(0.05)
      # Frozen while the disk fills, so that it cannot finish in between.
      process.send_signal(signal.SIGSTOP)
      saved_before = committed_steps(workdir)
      _fill(mount_point)
      process.send_signal(signal.SIGCONT)
      stdout, stderr = process.communicate(timeout=300)
    finally:
      if process.poll() is None:
        process.kill()
    assert saved_before, "no checkpoint was written before the disk was filled"
    assert process.returncode == SAVE_FAILED_EXIT_CODE, stderr[-3000:]
    assert "CHECKPOINT SAVE FAILED" in stdout and "No space left on device" in stdout
    complete = committed_steps(workdir)
    assert complete and complete[-1] >= saved_before[-1]
    assert f"resumes from step {complete[-1]}" in stdout
    final_params(workdir, complete[-1])  # restorable

    # Free the space; the same command resumes from the newest complete step.
    os.remove(os.path.join(mount_point, "filler"))
    rerun = subprocess.run(
      command(workdir, *steps),
      cwd=REPO,
      env=environment(1),
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Pretraining finished at step 400" in rerun.stdout
    info = json.load(open(os.path.join(workdir, "run_info.json")))
    assert info["resume"] == f"resuming from step {complete[-1]}"
  finally:
    subprocess.run(["umount", "-l", mount_point], capture_output=True)
    shutil.rmtree(mount_point, ignore_errors=True)
