"""The real command, `python -m mae_jax.main`, in subprocesses.

A run killed with SIGKILL resumes from its newest complete checkpoint, one
sent SIGTERM saves, exits with the "preempted" status and resumes, and one
stopped with Ctrl-C saves, exits 130 and resumes; all end bit-identical to
an uninterrupted run. A checkpoint written on 8
devices (fsdp) resumes on 1 device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from mae_jax.core.preemption import PREEMPTED_EXIT_CODE
from mae_jax.errors import INTERRUPTED_EXIT_CODE
from tests.helpers import REPO, environment, final_params, with_sigint
from tests.helpers import main_command as command


def run(cmd: list[str], devices: int = 1) -> subprocess.CompletedProcess:
  result = subprocess.run(
    cmd, cwd=REPO, env=environment(devices), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def committed_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


STEPS = [
  "--config.num_train_steps=120",
  "--config.checkpoint_every_steps=20",
  "--config.eval_every_steps=60",
  "--config.keep_checkpoints=10",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  run(command(workdir, *STEPS))
  return workdir


def saves_in_flight(workdir: str) -> list[str]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return [name for name in os.listdir(directory) if "orbax-checkpoint-tmp" in name]


def start_and_signal(
  workdir: str,
  sig: int,
  *,
  during_save: bool = False,
  overrides: tuple[str, ...] = (),
  as_a_terminal: bool = False,
  stderr=subprocess.DEVNULL,
) -> tuple[int, list[int], str]:
  """Starts the run, sends `sig` once its first checkpoint is complete (or,
  with `during_save`, while a later save is half written); `as_a_terminal`:
  to the run's whole process group, its input workers included, as a
  terminal's Ctrl-C does."""
  process = subprocess.Popen(
    # Ctrl-C as a terminal delivers it, however the suite was started.
    with_sigint(command(workdir, *STEPS, *overrides)),
    cwd=REPO,
    env=environment(1),
    stdout=subprocess.PIPE,
    stderr=stderr,
    text=True,
    start_new_session=as_a_terminal,
  )
  ready = (
    (lambda: committed_steps(workdir) and saves_in_flight(workdir))
    if during_save
    else (lambda: committed_steps(workdir))
  )
  try:
    deadline = time.time() + 300
    while not ready() and time.time() < deadline:
      time.sleep(0.002 if during_save else 0.05)
    steps_at_signal = committed_steps(workdir)
    if as_a_terminal:
      os.killpg(process.pid, sig)
    else:
      process.send_signal(sig)
    stdout, _ = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert steps_at_signal and steps_at_signal[-1] < 120, steps_at_signal
  return process.returncode, steps_at_signal, stdout


def assert_same_run(resumed: str, uninterrupted: str) -> None:
  jax.tree.map(
    np.testing.assert_array_equal, final_params(uninterrupted, 120), final_params(resumed, 120)
  )
  losses = lambda w: [l["loss"] for l in map(json.loads, open(f"{w}/metrics.jsonl")) if "loss" in l]
  assert losses(resumed) == losses(uninterrupted)


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, uninterrupted):
  interrupted = str(tmp_path / "interrupted")
  returncode, _, _ = start_and_signal(interrupted, signal.SIGKILL)
  assert returncode == -signal.SIGKILL
  steps_at_kill = committed_steps(interrupted)
  assert steps_at_kill[-1] < 120
  result = run(command(interrupted, *STEPS))
  assert "Pretraining finished at step 120" in result.stdout
  info = json.load(open(os.path.join(interrupted, "run_info.json")))
  assert info["resume"] == f"resuming from step {steps_at_kill[-1]}"
  assert_same_run(interrupted, uninterrupted)


def test_sigkill_during_a_save_never_resumes_from_the_half_written_step(tmp_path, uninterrupted):
  # The kill follows the sight of a half-written step within milliseconds; in
  # the rare case the save finished in between, try again on a fresh workdir.
  for attempt in range(3):
    interrupted = str(tmp_path / f"interrupted_{attempt}")
    returncode, _, _ = start_and_signal(interrupted, signal.SIGKILL, during_save=True)
    assert returncode == -signal.SIGKILL
    if saves_in_flight(interrupted):
      break
  assert saves_in_flight(interrupted), "the kill was meant to land in the middle of a save"
  complete = committed_steps(interrupted)
  result = run(command(interrupted, *STEPS))
  assert "Pretraining finished at step 120" in result.stdout
  info = json.load(open(os.path.join(interrupted, "run_info.json")))
  assert info["resume"] == f"resuming from step {complete[-1]}"
  assert_same_run(interrupted, uninterrupted)


def test_sigterm_saves_exits_resumable_and_resumes_exactly(tmp_path, uninterrupted):
  preempted = str(tmp_path / "preempted")
  returncode, steps_at_signal, stdout = start_and_signal(preempted, signal.SIGTERM)
  assert returncode == PREEMPTED_EXIT_CODE, stdout[-2000:]
  saved = committed_steps(preempted)[-1]
  assert steps_at_signal[-1] <= saved < 120
  assert f"PREEMPTED: preempted at step {saved}" in stdout
  result = run(command(preempted, *STEPS))
  assert "Pretraining finished at step 120" in result.stdout
  assert json.load(open(f"{preempted}/run_info.json"))["resume"] == f"resuming from step {saved}"
  assert_same_run(preempted, uninterrupted)


def test_ctrl_c_saves_exits_130_without_a_traceback_and_resumes_exactly(tmp_path, uninterrupted):
  """Ctrl-C in a terminal (SIGINT to the process group, a Grain worker
  process included): the step's checkpoint is saved, one line says so,
  exit 130 (not 75: no launcher reruns a run a person stopped)."""
  interrupted = str(tmp_path / "interrupted")
  with open(tmp_path / "stderr", "w+") as stderr:
    returncode, steps_at_signal, stdout = start_and_signal(
      interrupted,
      signal.SIGINT,
      overrides=("--config.data.num_workers=1",),
      as_a_terminal=True,
      stderr=stderr,
    )
    stderr.seek(0)
    errors = stderr.read()
  assert returncode == INTERRUPTED_EXIT_CODE == 130, (stdout[-2000:], errors[-3000:])
  assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors[-3000:]
  saved = committed_steps(interrupted)[-1]
  assert steps_at_signal[-1] <= saved < 120
  assert f"INTERRUPTED: interrupted at step {saved}: checkpoint saved in" in stdout
  assert "Ctrl-C: saving a checkpoint after this step" in errors
  run(command(interrupted, *STEPS))
  assert_same_run(interrupted, uninterrupted)  # workers change speed, never the batches


def test_a_damaged_data_file_is_one_short_line_at_resume(tmp_path):
  """Half of the largest array file gone: the restore fails on one read
  while the others complete in the background; one short line, exit 2, and
  none of the reports orbax's other reads would print at exit."""
  workdir = str(tmp_path / "run")
  run(command(workdir, "--config.num_train_steps=2", "--config.checkpoint_every_steps=2"))
  state = os.path.join(workdir, "checkpoints", "2", "state")
  files = [os.path.join(root, name) for root, _, names in os.walk(state) for name in names]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  result = subprocess.run(
    command(workdir, "--config.num_train_steps=4"),
    cwd=REPO,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
  (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert "checkpoint step 2" in line and "could not be read" in line and len(line) < 600, line
  assert "TensorStore details" not in line
  assert committed_steps(workdir) == [2]


def test_checkpoint_from_8_devices_resumes_on_1(tmp_path):
  workdir = str(tmp_path / "run")
  run(
    command(
      workdir,
      "--config.num_train_steps=4",
      "--config.checkpoint_every_steps=2",
      "--config.mesh.data=1",
      "--config.mesh.fsdp=8",
    ),
    devices=8,
  )
  assert json.load(open(f"{workdir}/run_info.json"))["mesh"]["fsdp"] == 8
  result = run(command(workdir, "--config.num_train_steps=6"), devices=1)
  assert "Pretraining finished at step 6" in result.stdout
  info = json.load(open(f"{workdir}/run_info.json"))
  assert info["resume"] == "resuming from step 4" and info["devices"]["count"] == 1
  assert committed_steps(workdir)[-1] == 6


def test_cli_rejects_a_bad_override_before_compiling(tmp_path):
  result = subprocess.run(
    command(str(tmp_path / "run"), "--config.global_batch_size=12"),
    cwd=REPO,
    env=environment(8),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "multiple of 8" in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.global_batch_sise=16", "global_batch_sise"),  # unknown key
    ("--config.global_batch_size=sixteen", "global_batch_size"),  # wrong type
    ("--config.model.mask_ratio=1.0", "mask_ratio"),  # impossible value
  ],
)
def test_cli_rejects_unknown_keys_wrong_types_and_bad_values(tmp_path, override, message):
  result = subprocess.run(
    command(str(tmp_path / "run"), override),
    cwd=REPO,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
