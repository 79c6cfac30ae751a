"""The real command, `python -m mae_jax.main`, in subprocesses.

A run killed with SIGKILL resumes from its newest complete checkpoint and
ends bit-identical to an uninterrupted run; a checkpoint written on 8
devices (fsdp) resumes on 1 device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from tests.test_pretrain import final_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir: str, data_dir: str, *overrides: str) -> list[str]:
  tiny = dict(
      model__image_size=16, model__patch_size=4, model__width=32, model__depth=1,
      model__heads=2, model__decoder_width=32, model__decoder_depth=1, model__decoder_heads=2,
      data__image_size=16, data__data_dir=data_dir, global_batch_size=16,
      warmup_epochs=0.5, log_every_steps=5, eval_batches=1, num_reconstructions=2,
      progress_bar="off")
  flags = [f"--config.{key.replace('__', '.')}={value}" for key, value in tiny.items()]
  return [sys.executable, "-m", "mae_jax.main", "--config=configs/pretrain.py:digits",
          f"--workdir={workdir}", *flags, *overrides]


def environment(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run(cmd: list[str], devices: int = 1) -> subprocess.CompletedProcess:
  result = subprocess.run(cmd, cwd=REPO, env=environment(devices), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def committed_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, digits_data_dir):
  steps = ["--config.num_train_steps=120", "--config.checkpoint_every_steps=20",
           "--config.eval_every_steps=60", "--config.keep_checkpoints=10"]
  uninterrupted = str(tmp_path / "uninterrupted")
  run(command(uninterrupted, digits_data_dir, *steps))

  interrupted = str(tmp_path / "interrupted")
  cmd = command(interrupted, digits_data_dir, *steps)
  process = subprocess.Popen(cmd, cwd=REPO, env=environment(1), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not committed_steps(interrupted) and time.time() < deadline:
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  steps_at_kill = committed_steps(interrupted)
  assert steps_at_kill and steps_at_kill[-1] < 120, steps_at_kill

  result = run(cmd)
  assert "Pretraining finished at step 120" in result.stdout
  info = json.load(open(os.path.join(interrupted, "run_info.json")))
  assert info["resume"] == f"resuming from step {steps_at_kill[-1]}"
  jax.tree.map(np.testing.assert_array_equal, final_params(uninterrupted, 120),
               final_params(interrupted, 120))
  losses = lambda w: [l["loss"] for l in map(json.loads, open(f"{w}/metrics.jsonl"))
                      if "loss" in l]
  assert losses(interrupted) == losses(uninterrupted)


def test_checkpoint_from_8_devices_resumes_on_1(tmp_path, digits_data_dir):
  workdir = str(tmp_path / "run")
  run(command(workdir, digits_data_dir, "--config.num_train_steps=4",
              "--config.checkpoint_every_steps=2", "--config.mesh.data=1",
              "--config.mesh.fsdp=8"), devices=8)
  assert json.load(open(f"{workdir}/run_info.json"))["mesh"]["fsdp"] == 8
  result = run(command(workdir, digits_data_dir, "--config.num_train_steps=6"), devices=1)
  assert "Pretraining finished at step 6" in result.stdout
  info = json.load(open(f"{workdir}/run_info.json"))
  assert info["resume"] == "resuming from step 4" and info["devices"]["count"] == 1
  assert committed_steps(workdir)[-1] == 6


def test_cli_rejects_a_bad_override_before_compiling(tmp_path, digits_data_dir):
  result = subprocess.run(
      command(str(tmp_path / "run"), digits_data_dir, "--config.global_batch_size=12"),
      cwd=REPO, env=environment(8), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "multiple of 8" in result.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
