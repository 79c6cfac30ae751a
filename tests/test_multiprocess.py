"""Multi-host pretraining on one machine: 2 processes x 2 CPU devices.

The real command (`python -m mae_jax.main --coordinator_address=...`) runs
in two processes joined by `jax.distributed` over 127.0.0.1, with the
parameters and AdamW state sharded over all 4 devices (fsdp spans both
processes), each process reading its own half of every batch, checkpoints
written cooperatively to one directory, and a restart that restores them.
The data order is global (a function of the seed and the step only), so a
single process reading whole batches reaches the same losses and parameters,
and a run saved by the two processes continues in one process (on another
device count) exactly as if it had never changed size.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import pretrain as pretrain_config
from mae_jax.jobs import pretrain
from tests.helpers import REPO, TINY_OVERRIDES, environment, final_params, without_key_bias

PROCESSES, DEVICES_PER_PROCESS = 2, 2
TINY = {
  **TINY_OVERRIDES,
  "global_batch_size": 16,
  # Evaluation (2 batches) at the end of each phase only.
  "warmup_epochs": 0.5,
  "log_every_steps": 1,
  "eval_every_steps": 100,
  "eval_batches": 2,
  "checkpoint_every_steps": 2,
  "progress_bar": "off",
  "knn_every_steps": 0,
  # Parameters and optimizer state sharded over every device of both hosts.
  "mesh.data": 1,
  "mesh.fsdp": -1,
}
PHASES = (4, 6)  # train to step 4, then restart and resume to step 6


def phase_overrides(steps: int) -> dict:
  # The reconstruction picture only at the end (it costs a compilation).
  return {
    **TINY,
    "num_train_steps": steps,
    "num_reconstructions": 2 if steps == PHASES[-1] else 0,
  }


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def start_process(
  workdir: str,
  overrides: dict,
  port: int,
  index: int,
  log,
  config: str = "configs/pretrain.py:digits",
) -> subprocess.Popen:
  """Process `index` of PROCESSES running the real CLI, its output in `log`."""
  command = [
    sys.executable,
    "-m",
    "mae_jax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
    f"--coordinator_address=127.0.0.1:{port}",
    f"--num_processes={PROCESSES}",
    f"--process_id={index}",
  ]
  return subprocess.Popen(
    command, cwd=REPO, env=environment(DEVICES_PER_PROCESS), stdout=log, stderr=subprocess.STDOUT
  )


def run_processes(
  workdir: str,
  steps: int,
  *,
  overrides: dict | None = None,
  config: str | None = None,
  logs_dir: str | None = None,
) -> list[str]:
  """Runs the job in PROCESSES processes and returns their outputs. As soon as
  one fails (or all run past the deadline) the others are killed, so no
  process, and no port, outlives the test."""
  overrides = overrides or phase_overrides(steps)
  extra = {"config": config} if config else {}
  port = free_port()
  processes, logs = [], []
  try:
    for index in range(PROCESSES):
      where = logs_dir or os.path.dirname(workdir)  # beside a local workdir
      logs.append(open(os.path.join(where, f"process{index}-{steps}.log"), "w+"))
      processes.append(start_process(workdir, overrides, port, index, logs[-1], **extra))
    deadline = time.monotonic() + 300
    while (
      any(p.poll() is None for p in processes)
      and time.monotonic() < deadline
      and not any(p.poll() for p in processes)
    ):
      time.sleep(0.2)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait(timeout=30)
  outputs = []
  for process, log in zip(processes, logs):
    log.seek(0)
    outputs.append(log.read())
    log.close()
  for index, (process, output) in enumerate(zip(processes, outputs)):
    assert process.returncode == 0, (
      f"process {index}: status {process.returncode}\n{output[-4000:]}"
    )
  return outputs


def logged(workdir: str, key: str) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {line["step"]: line[key] for line in map(json.loads, f) if key in line}


def phase_config(steps: int):
  config = pretrain_config.get_config("digits")
  for key, value in phase_overrides(steps).items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def test_multiprocess_pretraining_matches_one_process_and_resumes_elastically(tmp_path):
  multi = str(tmp_path / "multi" / "run")
  elastic = str(tmp_path / "elastic")
  os.makedirs(os.path.dirname(multi))
  for steps in PHASES:
    outputs = run_processes(multi, steps)
    # Only process 0 reports.
    assert f"Pretraining finished at step {steps}" in outputs[0]
    assert "Pretraining finished" not in outputs[1]
    if steps == PHASES[0]:
      shutil.copytree(multi, elastic)  # Saved by 2 processes x 2 devices.
  info = json.load(open(os.path.join(multi, "run_info.json")))
  assert info["devices"]["processes"] == PROCESSES and info["devices"]["count"] == 4
  assert info["mesh"]["fsdp"] == 4 and info["resume"] == f"resuming from step {PHASES[0]}"
  assert os.path.getsize(os.path.join(multi, "reconstructions.png")) > 0

  # Elastic: the 2-process run resumed by one process on 8 devices.
  pretrain.train_and_evaluate(phase_config(PHASES[-1]), elastic)
  info = json.load(open(os.path.join(elastic, "run_info.json")))
  assert info["devices"]["processes"] == 1 and info["devices"]["count"] == 8
  # One process, 8 devices, from scratch: the real pipeline, whole batches.
  single = str(tmp_path / "single")
  for steps in PHASES:
    pretrain.train_and_evaluate(phase_config(steps), single)

  single_losses = logged(single, "loss")
  assert sorted(single_losses) == list(range(1, PHASES[-1] + 1))
  for run in (multi, elastic):
    assert logged(run, "loss") == pytest.approx(single_losses, rel=1e-5)
    # Evaluation sums over both hosts' slices of the held-out split.
    assert sorted(logged(run, "eval_loss")) == list(PHASES)
    assert logged(run, "eval_loss") == pytest.approx(logged(single, "eval_loss"), rel=1e-5)
    jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(
        *without_key_bias(path, a, b), atol=2e-5, rtol=1e-4, err_msg=str(path)
      ),
      final_params(single, PHASES[-1]),
      final_params(run, PHASES[-1]),
    )


def test_multiprocess_flags_go_together(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mae_jax.main",
      "--config=configs/pretrain.py:digits",
      f"--workdir={tmp_path}",
      "--coordinator_address=127.0.0.1:1234",
    ],
    cwd=REPO,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert "--num_processes and --process_id go together" in result.stderr


@pytest.mark.parametrize(
  "environ, detected",
  [
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),  # multi-host TPU slice
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False),  # one TPU host
    ({"MEGASCALE_NUM_SLICES": "2"}, True),  # multi-slice on GKE
    ({"SLURM_NTASKS": "16"}, True),
    ({"SLURM_NTASKS": "1"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({}, False),
  ],
)
def test_multiprocess_cluster_detection(environ, detected):
  from mae_jax.main import cluster_detected

  assert cluster_detected(environ) is detected


def test_fine_tuning_on_two_processes_splits_the_batch_as_pretraining_does(tmp_path):
  """One batch-split rule for every job: 4 images over 2 processes x 2
  devices (one per device), as pretraining takes them. The evaluation jobs
  used to ask for a multiple of data-parallel devices x processes (8)."""
  workdir = str(tmp_path / "finetune" / "run")
  os.makedirs(os.path.dirname(workdir))
  overrides = {
    **TINY_OVERRIDES,
    "global_batch_size": 4,
    "eval_batch_size": 4,
    "num_train_steps": 2,
    "warmup_epochs": 0.0,
    "log_every_steps": 1,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
    "progress_bar": "off",
    "baseline": "random_init",
  }
  outputs = run_processes(workdir, 2, overrides=overrides, config="configs/finetune.py:digits")
  assert "Fine-tuning (" in outputs[0] and "Fine-tuning (" not in outputs[1]
  assert logged(workdir, "loss").keys() == {1, 2}
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["num_eval_examples"] > 0
