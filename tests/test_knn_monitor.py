"""The periodic k-NN monitor in pretraining (config.knn_every_steps).

It runs at its steps and the last one on FSDP-sharded parameters, writes
knn_top1/top5 to metrics.jsonl and TensorBoard, leaves the training
trajectory bit-identical, and bad settings fail before anything compiles.
"""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest

from configs import pretrain as pretrain_config
from mae_jax import aot
from mae_jax.core.plan import make_plan
from mae_jax.data import dataset_info
from mae_jax.jobs.pretrain import train_and_evaluate
from tests.helpers import final_params, tiny_config


def monitored_run(workdir: str, knn_every_steps: int) -> tuple[dict, list]:
  # FSDP: the monitor must gather sharded parameters itself.
  config = tiny_config(
    num_train_steps=5,
    log_every_steps=1,
    eval_every_steps=5,
    checkpoint_every_steps=5,
    num_reconstructions=0,
    knn_every_steps=knn_every_steps,
    knn_train_batches=4,
  )
  config.mesh.update(data=2, fsdp=4)
  final = train_and_evaluate(config, workdir)
  return final, [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_monitor_runs_at_its_steps_and_leaves_training_unchanged(tmp_path):
  _, plain = monitored_run(str(tmp_path / "off"), 0)
  final, monitored = monitored_run(str(tmp_path / "on"), 2)

  knn_lines = [line for line in monitored if "knn_top1" in line]
  assert [line["step"] for line in knn_lines] == [2, 4, 5]  # every 2 steps and the last
  for line in knn_lines:
    assert set(line) == {"step", "knn_top1", "knn_top5"}  # 10 classes: top-5 too
    assert 0 <= line["knn_top1"] <= line["knn_top5"] <= 100  # percent, like eval_top1
  assert final["knn_top1"] == knn_lines[-1]["knn_top1"]
  assert not any("knn_top1" in line for line in plain)

  # Bit-identical trajectory: the monitor draws no random numbers from the train stream.
  def trace(lines):
    return [(line["step"], line["loss"], line["grad_norm"]) for line in lines if "loss" in line]

  assert trace(monitored) == trace(plain) and len(trace(plain)) == 5
  jax.tree.map(
    np.testing.assert_array_equal,
    final_params(str(tmp_path / "off"), 5),
    final_params(str(tmp_path / "on"), 5),
  )

  events = glob.glob(str(tmp_path / "on" / "tensorboard" / "events.out.tfevents.*"))
  records = b"".join(open(path, "rb").read() for path in events)  # scalar tags are plain bytes
  assert b"knn_top1" in records and b"knn_top5" in records


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(knn_every_steps=-1), "knn_every_steps=-1: must be >= 0"),
    (dict(knn_every_steps=10, knn_k=0), "knn_k=0"),
    (dict(knn_every_steps=10, knn_temperature=0.0), "knn_temperature"),
    (dict(knn_every_steps=10, knn_feature="mean"), "knn_feature"),
    (dict(knn_every_steps=10, knn_train_batches=0), "knn_train_batches"),
  ],
)
def test_bad_monitor_settings_fail_before_compiling(change, message):
  config = tiny_config(**change)
  with pytest.raises(ValueError, match=message):
    make_plan(config, num_devices=8, process_count=1)


def test_monitor_on_a_dataset_without_labels_is_refused():
  sizes, _ = dataset_info(tiny_config().data)
  unlabelled = (sizes, None)  # a dataset without class labels
  plan = make_plan(tiny_config(), num_devices=8, process_count=1, known_dataset=unlabelled)
  assert plan.num_classes is None  # fine with the monitor off
  with pytest.raises(ValueError, match="no class labels.*knn_every_steps=0"):
    make_plan(
      tiny_config(knn_every_steps=10), num_devices=8, process_count=1, known_dataset=unlabelled
    )


def test_monitor_defaults_and_aot_plans():
  assert pretrain_config.get_config("digits").knn_every_steps == 220  # mid-run and end
  assert pretrain_config.get_config("vit_base").knn_every_steps == 0
  assert pretrain_config.get_config("vit_large,runlocal").knn_every_steps == 0
  # The AOT check reads no labels; the monitor is outside the train step.
  config = pretrain_config.get_config("vit_base")
  config.knn_every_steps = 1000
  assert aot.plan_without_data(config, jax.devices()).total_steps > 0
  config.knn_every_steps = -1
  with pytest.raises(ValueError, match="knn_every_steps"):
    aot.plan_without_data(config, jax.devices())
