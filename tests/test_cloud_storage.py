"""Runs whose workdir, weights and data live in a Cloud Storage bucket,
against a real GCS JSON-API server on 127.0.0.1 (fake-gcs-server; the
`storage_server` and `bucket` fixtures in conftest.py start it, point
every client at it and fail a test that tried to reach anything else).

The command line pretrains into a bucket, is preempted after its first
checkpoint, resumes from the bucket and ends bit-identical to a local run
with one metrics history; a second run on the same bucket workdir is
refused by the lease; the evaluation jobs start from a checkpoint in a
bucket; conversion reads and writes buckets; data is read from a bucket;
a bucket that does not exist is one line and exit 2 before compiling.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from mae_jax import storage
from mae_jax.core.metrics import read_jsonl
from mae_jax.core.preemption import PREEMPTED_EXIT_CODE
from tests.helpers import REPO, environment, final_params, with_sigint
from tests.helpers import main_command as command

TOTAL = 96
STEPS = [
  f"--config.num_train_steps={TOTAL}",
  "--config.checkpoint_every_steps=16",
  "--config.log_every_steps=8",
  "--config.eval_every_steps=48",
  "--config.keep_checkpoints=10",
]
# Fields that measure time, not the computation.
TIMING = {"images_per_sec", "input_wait_fraction", "compile_seconds"}


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
  result = subprocess.run(
    cmd, cwd=REPO, env=environment(1), capture_output=True, text=True, timeout=600
  )
  assert result.returncode == expect, (result.stdout + result.stderr)[-3000:]
  return result


def complete_steps(workdir: str) -> list[int]:
  """Finalised steps: orbax renames a step to its number once it is complete."""
  directory = storage.path(workdir, "checkpoints")
  if not directory.exists():
    return []
  return sorted(int(entry.name) for entry in directory.iterdir() if entry.name.isdigit())


def history(workdir: str) -> list[dict]:
  """metrics.jsonl without its timing fields (and the rows that only time
  a compile: a resumed run compiles again)."""
  rows = [
    {k: v for k, v in row.items() if k not in TIMING}
    for row in read_jsonl(storage.join(workdir, "metrics.jsonl"))
  ]
  return [row for row in rows if set(row) != {"step"}]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("local") / "run")
  run(command(workdir, *STEPS))
  return workdir


def start_and_sigterm_after_first_checkpoint(workdir: str) -> tuple[int, str]:
  process = subprocess.Popen(
    with_sigint(command(workdir, *STEPS)),
    cwd=REPO,
    env=environment(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.time() + 300
    while not complete_steps(workdir) and time.time() < deadline:
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, output


def test_pretraining_in_a_bucket_preempted_and_rerun_equals_a_local_run(bucket, local_run):
  workdir = f"{bucket}/runs/digits"
  returncode, output = start_and_sigterm_after_first_checkpoint(workdir)
  assert returncode == PREEMPTED_EXIT_CODE, output[-3000:]
  saved = complete_steps(workdir)[-1]
  assert 16 <= saved < TOTAL and f"PREEMPTED: preempted at step {saved}" in output

  result = run(command(workdir, *STEPS))
  assert f"Pretraining finished at step {TOTAL}" in result.stdout
  assert f"checkpoints:     {workdir}/checkpoints" in result.stdout
  run_info = json.loads(storage.read_text(f"{workdir}/run_info.json"))
  assert run_info["resume"] == f"resuming from step {saved}"

  # One history, every row, equal to the local run's (timing aside).
  assert history(workdir) == history(local_run)
  assert [row["step"] for row in history(workdir) if "loss" in row] == list(range(8, TOTAL + 1, 8))
  jax.tree.map(
    np.testing.assert_array_equal, final_params(workdir, TOTAL), final_params(local_run, TOTAL)
  )
  assert complete_steps(workdir) == complete_steps(local_run) == list(range(16, TOTAL + 1, 16))
  for name in ("config.json", "reconstructions.png", "tensorboard"):
    assert storage.exists(f"{workdir}/{name}"), name
  assert list(storage.path(workdir, "tensorboard").iterdir())
  assert not storage.exists(f"{workdir}/lease.json")  # given back


def test_a_second_run_on_a_held_bucket_workdir_is_refused(bucket):
  from mae_jax.core import lease

  workdir = f"{bucket}/runs/held"
  held = lease.acquire(workdir)  # this process holds it, as a live run would
  try:
    result = run(command(workdir, "--config.num_train_steps=2"), expect=2)
  finally:
    held.release()
  assert "is in use by another run" in result.stderr
  assert "Traceback" not in result.stderr
  assert not complete_steps(workdir)


def test_a_bucket_that_does_not_exist_is_one_line_before_compiling(storage_server):
  result = run(command("gs://no-such-bucket-here/run", "--config.num_train_steps=2"), expect=2)
  assert "cannot write to --workdir='gs://no-such-bucket-here/run'" in result.stderr
  assert "Traceback" not in result.stderr
  assert "First step" not in result.stderr
