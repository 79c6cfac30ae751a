"""A preemption notice at any step loses nothing: deterministic notices.

The notice is delivered at a chosen step by patching the loop's watcher
(the real SIGTERM path has its own tests: test_main_cli.py,
test_eval_jobs.py). For a log step, an eval step, a checkpoint step and a
plain step mid-interval, the preempted run plus its rerun write the
metrics.jsonl of an uninterrupted run, timing fields aside, for
pretraining, the linear probe and fine-tuning.
"""

from __future__ import annotations

import json
import os

import pytest

from configs import finetune as finetune_config
from configs import linprobe as linprobe_config
from mae_jax.core.preemption import Preempted, PreemptionWatcher
from mae_jax.jobs import run_job
from tests.helpers import TINY_MODEL, tiny_config

# Fields that measure time, which no two runs share.
TIMING = {"compile_seconds", "images_per_sec", "examples_per_sec", "input_wait_fraction"}


def rows(workdir: str) -> list[dict]:
  """metrics.jsonl without timing fields (rows holding only those dropped)."""
  out = []
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    row = {key: value for key, value in json.loads(line).items() if key not in TIMING}
    if set(row) != {"step"}:
      out.append(row)
  return out


def preempted_then_resumed(config, workdir: str, at_step: int, monkeypatch) -> None:
  with monkeypatch.context() as patch:
    patch.setattr(PreemptionWatcher, "reached", lambda self, step: step == at_step)
    with pytest.raises(Preempted) as raised:
      run_job(config, workdir)
  assert raised.value.step == at_step
  run_job(config, workdir)


def pretrain_config():
  # 10 steps: log at 4, 8, 10; eval at 6, 10; checkpoints at 5, 10.
  return tiny_config(
    num_train_steps=10,
    log_every_steps=4,
    eval_every_steps=6,
    checkpoint_every_steps=5,
    eval_batches=1,
    num_reconstructions=0,
  )


@pytest.fixture(scope="module")
def uninterrupted_pretraining(tmp_path_factory) -> list[dict]:
  workdir = str(tmp_path_factory.mktemp("order") / "uninterrupted")
  run_job(pretrain_config(), workdir)
  return rows(workdir)


@pytest.mark.parametrize(
  "at_step, kind", [(4, "log"), (6, "eval"), (5, "checkpoint"), (7, "plain, mid-interval")]
)
def test_pretraining_preempted_at_any_step_logs_every_row(
  tmp_path, monkeypatch, uninterrupted_pretraining, at_step, kind
):
  workdir = str(tmp_path / "preempted")
  preempted_then_resumed(pretrain_config(), workdir, at_step, monkeypatch)
  assert rows(workdir) == uninterrupted_pretraining, kind


def eval_job_config(module):
  config = module.get_config("digits")
  config.model.update(TINY_MODEL)
  config.data.image_size = 16
  config.progress_bar = "off"
  config.baseline = "random_init"
  config.global_batch_size = 16
  config.eval_batch_size = 64
  # 6 steps: log at 2, 4, 6; eval at 3, 6; checkpoints at 4, 6.
  config.num_train_steps = 6
  config.warmup_epochs = 0.1
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 4
  return config


@pytest.mark.parametrize("module", [linprobe_config, finetune_config], ids=["probe", "finetune"])
def test_probe_and_fine_tuning_preempted_at_eval_and_plain_steps_log_every_row(
  tmp_path, monkeypatch, module
):
  uninterrupted = str(tmp_path / "uninterrupted")
  run_job(eval_job_config(module), uninterrupted)
  for at_step in (3, 5):  # an eval step; a plain one after a checkpoint, mid-interval
    workdir = str(tmp_path / f"preempted_{at_step}")
    preempted_then_resumed(eval_job_config(module), workdir, at_step, monkeypatch)
    assert rows(workdir) == rows(uninterrupted), at_step
