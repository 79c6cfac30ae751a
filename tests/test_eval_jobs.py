"""Evaluation jobs end to end on the bundled digits with a tiny ViT.

A module fixture pretrains for a few steps; the tests restore its encoder
(bit-identical outputs, scanned or not), run the linear probe, k-NN and
fine-tuning jobs from it, and check the errors for bad `init_from`s and
labels before anything compiles.
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import finetune as finetune_config
from configs import knn as knn_config
from configs import linprobe as linprobe_config
from mae_jax.core import batches as batches_lib
from mae_jax.core import checkpointing, sharding
from mae_jax.core import pretrained as pretrained_lib
from mae_jax.core.nonfinite import NonFiniteError
from mae_jax.core.pixels import PixelNormalization
from mae_jax.core.plan import make_plan
from mae_jax.core.state import create_state, mesh_context, state_specs
from mae_jax.core.train_step import make_train_step
from mae_jax.evaluate.layer_decay import finetune_adamw
from mae_jax.evaluate.models import ProbeHead, ViTClassifier
from mae_jax.evaluate.plan import make_eval_plan
from mae_jax.evaluators import accuracy, knn
from mae_jax.jobs import finetune, linprobe, run_job
from mae_jax.model.config import ModelConfig
from mae_jax.model.features import frozen_features
from mae_jax.model.mae import Encoder, MaskedAutoencoder
from mae_jax.model.stacking import stack_layers
from tests.helpers import (
  TINY_MODEL,
  apply_changes,
  final_params,
  nan_batch_at,
  tiny_config,
  train_stream,
  without_key_bias,
)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("eval") / "pretrain")
  run_job(
    tiny_config(num_train_steps=4, checkpoint_every_steps=4, num_reconstructions=0),
    workdir,
  )
  return workdir


def eval_config(module, **overrides):
  config = module.get_config("digits")
  config.model.update(TINY_MODEL)
  config.data.image_size = 16
  config.progress_bar = "off"
  if config.job != "knn":
    config.global_batch_size = 16
    config.num_train_steps = 4
    config.warmup_epochs = 0.1
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
  config.eval_batch_size = 64
  for key, value in overrides.items():
    config[key] = value
  return config


def images(n=4, size=16):
  return jnp.asarray(np.random.default_rng(0).normal(size=(n, size, size, 1)), jnp.float32)


def test_restored_encoder_is_bit_identical(pretrained):
  params = final_params(pretrained, 4)
  model = MaskedAutoencoder(ModelConfig(channels=1, **TINY_MODEL))
  expected = model.apply({"params": params}, images(), method="encode").tokens
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  located = pretrained_lib.locate(pretrained)
  assert located.step == 4 and located.directory.endswith("checkpoints")
  with mesh_context(mesh, sharding.DEFAULT_RULES):
    encoder = pretrained_lib.restore_encoder(
      located, Encoder, model.config, mesh, sharding.DEFAULT_RULES
    )
  # Restored onto an 8-device (data x fsdp) mesh; gathered, it is bit-identical,
  # and so is what the encoder computes with it.
  encoder = jax.device_get(encoder)
  jax.tree.map(np.testing.assert_array_equal, encoder, jax.device_get(params["encoder"]))
  np.testing.assert_array_equal(
    Encoder(model.config).apply({"params": encoder}, images()), expected
  )


def test_scanned_encoder_only_checkpoint_restores_unscanned(pretrained, tmp_path):
  """A converted checkpoint: encoder only, `layers` layout, named by its step directory."""
  params = final_params(pretrained, 4)
  config = ModelConfig(channels=1, **TINY_MODEL)
  step_dir = checkpointing.write_params(
    str(tmp_path / "converted"),
    stack_layers({"encoder": jax.device_get(params["encoder"])}),
    config.replace(scan_layers=True),
    source="test",
    param_layout="layers",
  )
  located = pretrained_lib.locate(step_dir)
  assert located.scanned and located.step == 0
  mesh = sharding.make_mesh({"data": 8})
  with mesh_context(mesh, sharding.DEFAULT_RULES):
    encoder = pretrained_lib.restore_encoder(located, Encoder, config, mesh, sharding.DEFAULT_RULES)
  jax.tree.map(np.testing.assert_array_equal, encoder, jax.device_get(params["encoder"]))


def probe_step(head, tx, schedule, features_fn):
  """The probe's train step as the engine makes it: step(state, batch, *frozen)."""
  task = linprobe.probe_task(head, features_fn)
  return make_train_step(task, tx, schedule, grad_accum_steps=1, seed_key=jax.random.key(0))


def test_frozen_encoder_is_not_differentiated():
  """The probe step holds no encoder state and runs no backward pass through it:
  it has no more matrix products than the encoder's forward plus the head's."""
  config = ModelConfig(channels=1, **TINY_MODEL)
  features_fn = frozen_features(config, "cls")
  encoder_params = nn.unbox(Encoder(config).init(jax.random.key(0), images()))["params"]
  head, tx = ProbeHead(10), optax.sgd(0.1)
  state = linprobe.create_probe_state(head, tx, jax.random.key(1), config.width)
  assert set(state.params) == {"linear"} and set(state.batch_stats) == {"bn"}
  step = probe_step(head, tx, optax.constant_schedule(0.1), features_fn)
  batch = {"image": images(), "label": jnp.arange(4)}
  before = jax.tree.map(np.array, encoder_params)
  new_state, _ = jax.jit(step)(state, batch, encoder_params)
  jax.tree.map(np.testing.assert_array_equal, encoder_params, before)
  assert not jax.tree.all(jax.tree.map(jnp.array_equal, new_state.params, state.params))

  def dots(jaxpr_text):
    return jaxpr_text.count("dot_general")

  forward = dots(str(jax.make_jaxpr(features_fn)(encoder_params, batch["image"])))
  whole = dots(str(jax.make_jaxpr(step)(state, batch, encoder_params)))
  assert whole <= forward + 3, (whole, forward)  # head: forward, two for its gradient


def test_probe_separates_linearly_separable_features():
  """Cached-feature path: features = class centroids + small noise, 100 % after training."""
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 3
  labels = np.repeat(np.arange(4), 32)
  features = (centres[labels] + 0.1 * rng.normal(size=(128, 16))).astype(np.float32)
  head = ProbeHead(4)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 6.4, 5, 100)
  from mae_jax.evaluate.lars import lars

  tx = lars(schedule)
  mesh = sharding.make_mesh({"data": 8})
  batch_sharding = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
  replicated = sharding.replicated(mesh)
  # As in the job: one sharding for the state throughout, so one executable.
  state = jax.jit(lambda k: linprobe.create_probe_state(head, tx, k, 16), out_shardings=replicated)(
    jax.random.key(0)
  )
  step = jax.jit(
    probe_step(head, tx, schedule, None),
    out_shardings=(replicated, replicated),
    donate_argnums=(0,),
  )
  stream = batches_lib.epoch_batches(
    {"features": features, "label": labels}, 32, batch_sharding, seed=0, start_step=0
  )
  for _ in range(100):
    state, metrics = step(state, next(stream))
    jax.block_until_ready(metrics)  # as the loop does for evaluation jobs (one_step_in_flight)
  evaluate = accuracy.accuracy_evaluator(
    linprobe.probe_logits(head, None),
    lambda: batches_lib.array_batches({"features": features, "label": labels}, 48, batch_sharding),
    num_classes=4,
    out_sharding=replicated,
  )
  result = evaluate(state)
  assert result["eval_top1"] == 100.0


def test_probe_step_keeps_its_state_on_non_finite_features():
  """BatchNorm's running statistics too: NaN features would poison them for good."""
  head, tx = ProbeHead(4), optax.sgd(0.1, momentum=0.9)
  state = linprobe.create_probe_state(head, tx, jax.random.key(0), 8)
  step = jax.jit(probe_step(head, tx, optax.constant_schedule(0.1), None))
  features = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
  features[3, 1] = np.nan
  new_state, metrics = step(state, {"features": features, "label": np.arange(8) % 4})
  assert float(metrics["nonfinite"]) == 1.0 and int(new_state.step) == 1
  jax.tree.map(
    np.testing.assert_array_equal,
    (new_state.params, new_state.batch_stats, new_state.opt_state),
    (state.params, state.batch_stats, state.opt_state),
  )


def test_knn_classifies_separated_clusters():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(7, 8))
  train_y, test_y = np.repeat(np.arange(7), 20), np.repeat(np.arange(7), 5)
  train_x = centres[train_y] + 0.05 * rng.normal(size=(140, 8))
  test_x = centres[test_y] + 0.05 * rng.normal(size=(35, 8))
  metrics = knn.knn_classify(train_x, train_y, test_x, test_y, num_classes=7, chunk=16)
  assert metrics == {"knn_top1": 100.0, "knn_top5": 100.0}


def test_linear_probe_job_outputs_and_resume(pretrained, tmp_path):
  workdir = str(tmp_path / "probe")
  config = eval_config(linprobe_config, init_from=pretrained)
  results = run_job(config, workdir)
  saved = json.load(open(os.path.join(workdir, "results.json")))
  assert saved["protocol"] == "linear_probe" and saved["step"] == 4
  assert 0 <= saved["top1"] <= 100 and "top5" in saved and saved["num_eval_examples"] == 300
  assert saved["checkpoint"]["step"] == 4 and saved["config"]["init_from"] == pretrained
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "eval_top1" in l] == [2, 4]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # Lose the last checkpoint: the resumed run ends where the first did.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
  assert run_job(config, workdir)["top1"] == results["top1"]


def test_knn_job_and_baselines(pretrained, tmp_path):
  mae = run_job(eval_config(knn_config, init_from=pretrained), str(tmp_path / "knn"))
  pixels = run_job(eval_config(knn_config, baseline="raw_pixels"), str(tmp_path / "knn_pixels"))
  assert mae["protocol"] == "knn" and mae["k"] == 20 and mae["step"] == 4
  assert pixels["checkpoint"] == {"baseline": "raw_pixels"} and pixels["top1"] > 80


def test_finetune_job_from_a_pretrained_encoder(pretrained, tmp_path):
  workdir = str(tmp_path / "finetune")
  config = eval_config(
    finetune_config, init_from=pretrained, mesh={"data": 2, "fsdp": 4, "tensor": 1}
  )
  results = run_job(config, workdir)
  assert results["protocol"] == "finetune" and results["feature"] == "pool"
  restored = checkpointing.restore_state(
    os.path.join(workdir, "checkpoints"),
    {"params": {"head": {"kernel": jax.ShapeDtypeStruct((32, 10), jnp.float32)}}},
    step=4,
  )
  assert np.isfinite(np.asarray(restored["params"]["head"]["kernel"])).all()


def test_finetune_and_knn_at_another_resolution(pretrained, tmp_path):
  """Pretrained at 16 px (a 4x4 grid), fine-tuned and probed at 24 px (6x6):
  the position table starts as the pretrained one resized (the reference's
  interpolate_pos_embed) and fine-tuning trains it."""
  from mae_jax.model.pos_embed import interpolate_pos_embed, sincos_2d

  at_24 = lambda module, **kw: eval_config(module, init_from=pretrained, **kw)
  config = at_24(finetune_config, num_train_steps=2, checkpoint_every_steps=2)
  config.model.image_size = config.data.image_size = 24
  workdir = str(tmp_path / "finetune24")
  assert run_job(config, workdir)["step"] == 2
  table = jax.ShapeDtypeStruct((1, 37, 32), jnp.float32)
  trained = checkpointing.restore_state(
    os.path.join(workdir, "checkpoints"), {"params": {"encoder": {"pos_embed": table}}}, step=2
  )["params"]["encoder"]["pos_embed"]
  start = interpolate_pos_embed(sincos_2d(32, 4)[None], 6)
  assert 0 < np.abs(np.asarray(trained) - start).max() < 0.1

  knn = at_24(knn_config)
  knn.model.image_size = knn.data.image_size = 24
  assert 0 <= run_job(knn, str(tmp_path / "knn24"))["top1"] <= 100


def _checkpoint_steps(workdir: str) -> list[int]:
  return sorted(
    checkpointing.manager(os.path.join(workdir, "checkpoints"), read_only=True).all_steps()
  )


def test_nan_batch_stops_fine_tuning_before_any_bad_checkpoint(tmp_path):
  workdir = str(tmp_path / "finetune_nan")
  config = eval_config(finetune_config, baseline="random_init")
  bad = nan_batch_at(config, 2)  # the 3rd step; checkpoints every 2
  with pytest.raises(NonFiniteError, match="step 3 .*Last good checkpoint: step 2"):
    finetune.run_finetune(config, workdir, train_batches=bad)
  assert _checkpoint_steps(workdir) == [2]


def test_nan_batch_in_fine_tuning_is_skipped_and_counted_when_asked(tmp_path):
  workdir = str(tmp_path / "finetune_skip")
  config = eval_config(finetune_config, baseline="random_init", nonfinite="skip")
  result = finetune.run_finetune(config, workdir, train_batches=nan_batch_at(config, 2))
  assert result["step"] == 4 and _checkpoint_steps(workdir) == [4]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {l["step"]: l["skipped_steps"] for l in lines if "skipped_steps" in l} == {2: 0, 4: 1}
  restored = checkpointing.restore_state(
    os.path.join(workdir, "checkpoints"),
    {"params": {"head": {"kernel": jax.ShapeDtypeStruct((32, 10), jnp.float32)}}},
    step=4,
  )
  assert np.isfinite(np.asarray(restored["params"]["head"]["kernel"])).all()


def test_sigterm_during_fine_tuning_saves_and_resumes(tmp_path):
  """A real SIGTERM (sent while the 2nd batch is read): the job saves that
  step, waits for it, raises Preempted (exit 75 from main); the rerun
  resumes there and ends where an uninterrupted run ends."""
  from mae_jax.core.preemption import Preempted

  config = eval_config(finetune_config, baseline="random_init", checkpoint_every_steps=4)
  uninterrupted = str(tmp_path / "uninterrupted")
  run_job(config, uninterrupted)

  def signalling(start_step):
    for index, batch in enumerate(train_stream(config, start_step), start=start_step):
      if index == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  workdir = str(tmp_path / "preempted")
  with pytest.raises(Preempted):
    finetune.run_finetune(config, workdir, train_batches=signalling)
  assert _checkpoint_steps(workdir) == [2]
  assert run_job(config, workdir)["step"] == 4
  abstract = {"params": {"head": {"kernel": jax.ShapeDtypeStruct((32, 10), jnp.float32)}}}
  resumed, reference = (
    checkpointing.restore_state(os.path.join(w, "checkpoints"), abstract, step=4)
    for w in (workdir, uninterrupted)
  )
  np.testing.assert_array_equal(
    resumed["params"]["head"]["kernel"], reference["params"]["head"]["kernel"]
  )


def test_fine_tuning_erases_on_the_device_from_the_pipelines_boxes(tmp_path):
  """With random erasing on, the pipeline ships boxes and the step erases
  inside them: the run trains, and differs from the same run without."""
  losses = {}
  for erasing in (0.0, 1.0):
    config = eval_config(finetune_config, baseline="random_init", num_train_steps=2)
    config.data.random_erasing = erasing
    workdir = str(tmp_path / f"erasing_{erasing}")
    run_job(config, workdir)
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses[erasing] = [line["loss"] for line in lines if "loss" in line]
  assert all(np.isfinite(losses[1.0])) and losses[1.0] != losses[0.0]


def damage_state(checkpoint_dir: str, step: int) -> None:
  """Truncates every non-trivial file of checkpoint `step`'s state."""
  damaged = 0
  for root, _, files in os.walk(os.path.join(checkpoint_dir, str(step), "state")):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, "r+b") as f:
          f.truncate(16)
        damaged += 1
  assert damaged


@pytest.mark.parametrize("module", [linprobe_config, finetune_config], ids=["probe", "finetune"])
def test_damaged_probe_or_fine_tuning_checkpoint_is_a_checkpoint_error(tmp_path, module):
  from mae_jax.errors import CheckpointError

  workdir = str(tmp_path / "run")
  run_job(eval_config(module, baseline="random_init", num_train_steps=2), workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  damage_state(checkpoints, 2)
  before = sorted(os.listdir(checkpoints))
  with pytest.raises(CheckpointError, match="step 2 .* could not be read.*move"):
    run_job(eval_config(module, baseline="random_init"), workdir)
  assert sorted(os.listdir(checkpoints)) == before


def _finetune_step(accum: int):
  """One fine-tuning step on 16 images over an 8-device data mesh, Mixup /
  CutMix and label smoothing on (the digits preset's), drop path off."""
  model = ViTClassifier(ModelConfig(channels=1, **TINY_MODEL), num_classes=10, head_init_std=0.02)
  config = finetune_config.get_config("digits")
  config.grad_accum_steps = accum
  schedule = optax.constant_schedule(1e-3)
  abstract = jax.eval_shape(
    lambda k: create_state(model, optax.identity(), k).params, jax.random.key(0)
  )
  tx = finetune_adamw(schedule, abstract, depth=1, layer_decay=0.65, weight_decay=0.05)
  mesh, rules = sharding.make_mesh({"data": 8}), sharding.DEFAULT_RULES
  shardings, _ = state_specs(model, tx, mesh, rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.normal(size=(16, 16, 16, 1)).astype(np.float32),
    "label": rng.integers(0, 10, size=16).astype(np.int32),
  }
  with mesh_context(mesh, rules):
    state = jax.jit(lambda k: create_state(model, tx, k), out_shardings=shardings)(
      jax.random.key(0)
    )
    step = jax.jit(
      make_train_step(
        finetune.finetune_task(model, PixelNormalization.of(config.data), config),
        tx,
        schedule,
        grad_accum_steps=config.grad_accum_steps,
        seed_key=jax.random.key(1),
      ),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, sharding.replicated(mesh)),
    )
    state, metrics = step(state, jax.device_put(batch, batch_sharding))
  return jax.device_get(state.params), jax.device_get(metrics)


def test_finetune_gradient_accumulation_equals_the_full_batch_step():
  """The global batch is mixed once, then split: 2 micro-batches (one image
  per device each) make the update of the whole batch."""
  (full, full_metrics), (accumulated, metrics) = _finetune_step(1), _finetune_step(2)
  assert float(metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), rel=1e-6)
  assert float(metrics["grad_norm"]) == pytest.approx(float(full_metrics["grad_norm"]), rel=1e-5)
  jax.tree_util.tree_map_with_path(
    lambda path, a, b: np.testing.assert_allclose(
      *without_key_bias(path, a, b), atol=1e-6, rtol=1e-5, err_msg=str(path)
    ),
    full,
    accumulated,
  )


@pytest.mark.parametrize(
  "module, accum, message",
  [
    (finetune_config, 0, r"grad_accum_steps=0: an integer >= 1"),
    (finetune_config, True, r"grad_accum_steps=True: an integer >= 1"),
    (finetune_config, 3, r"global_batch_size=16 is not divisible by config.grad_accum_steps=3"),
    (
      finetune_config,
      4,
      r"= 4 images per micro-batch do not split over the 8 data-parallel"
      r".*multiple of 32",
    ),
    (linprobe_config, 2, r"grad_accum_steps=2: .*fine-tuning only, not 'linprobe'"),
    (knn_config, 2, r"grad_accum_steps=2: .*fine-tuning only, not 'knn'"),
  ],
)
def test_bad_gradient_accumulation_fails_before_compiling(module, accum, message):
  config = eval_config(module, baseline="random_init", grad_accum_steps=accum)
  with pytest.raises(ValueError, match=message):
    make_eval_plan(config, num_devices=8, process_count=1)


def test_finetune_plan_with_gradient_accumulation():
  config = eval_config(
    finetune_config, baseline="random_init", grad_accum_steps=2, eval_batch_size=-1
  )
  plan = make_eval_plan(config, num_devices=8, process_count=1)
  # The schedule (steps per epoch) follows the global batch; only the micro-batch shrinks.
  assert plan.micro_batch_size == 8 and plan.steps_per_epoch == 1497 // 16
  # Unset, the eval batch is the micro-batch, as in pretraining.
  assert plan.eval_batch_size == 8


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(init_from="/no/such/dir"), "nothing there"),
    (dict(init_from=""), "init_from"),
    (dict(baseline="random_init"), "must be empty"),
    (dict(model={"width": 64, "heads": 2}), "another architecture.*width"),
    (dict(model={"patch_size": 8}), "another architecture.*patch_size"),
    (dict(num_classes=5), "outside a head of 5 classes"),
    (dict(feature="mean"), "feature"),
    (dict(optimizer={"name": "sgd"}), "lars"),
    (dict(cache_features=True, data={"random_resized_crop": True}), "cache_features"),
    (dict(nonfinite="ignore"), "nonfinite='ignore': 'stop' or 'skip'"),
  ],
)
def test_bad_evaluation_configs_fail_before_compiling(change, message, pretrained):
  config = apply_changes(eval_config(linprobe_config, init_from=pretrained), change)
  with pytest.raises(ValueError, match=message):
    make_eval_plan(config, num_devices=8, process_count=1)


def test_half_written_and_empty_checkpoints_are_refused(pretrained, tmp_path):
  copy = tmp_path / "crashed"
  shutil.copytree(os.path.join(pretrained, "checkpoints"), copy / "checkpoints")
  os.rename(copy / "checkpoints" / "4", copy / "checkpoints" / "4.orbax-checkpoint-tmp-99")
  with pytest.raises(ValueError, match="only half-written steps.*4.orbax-checkpoint-tmp"):
    pretrained_lib.locate(str(copy))
  with pytest.raises(ValueError, match="step 4 .* is half-written"):
    pretrained_lib.locate(str(copy / "checkpoints"), step=4)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no checkpoint steps"):
    pretrained_lib.locate(str(tmp_path / "empty"))


def test_labels_outside_the_head_fail_before_training():
  with pytest.raises(ValueError, match=r"labels \[12\] are outside the head's 10 classes"):
    batches_lib.check_labels(np.array([1, 12, 3]), np.ones(3), 10, "training data")
  batches_lib.check_labels(np.array([1, 12]), np.array([1.0, 0.0]), 10, "padding is ignored")


def test_presets_follow_the_reference_recipes():
  base = linprobe_config.get_config("vit_base")
  assert (base.global_batch_size, base.optimizer.base_lr, base.num_epochs) == (16384, 0.1, 90)
  assert base.optimizer.momentum == 0.9 and base.optimizer.trust_coefficient == 0.001
  assert base.optimizer.weight_decay == 0 and base.warmup_epochs == 10
  assert base.head_init_std == 0.01 and base.data.eval_crop_fraction == 0.875
  assert linprobe_config.get_config("vit_large").num_epochs == 50
  for name, epochs, lr, decay, drop in [
    ("vit_base", 100, 5e-4, 0.65, 0.1),
    ("vit_large", 50, 1e-3, 0.75, 0.2),
    ("vit_huge", 50, 1e-3, 0.75, 0.3),
  ]:
    ft = finetune_config.get_config(name)
    assert (ft.num_epochs, ft.optimizer.base_lr, ft.optimizer.layer_decay) == (epochs, lr, decay)
    assert ft.model.drop_path_rate == drop and ft.global_batch_size == 1024
    assert (ft.mixup, ft.cutmix, ft.mixup_switch_prob, ft.label_smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert (
      ft.data.randaugment_ops,
      ft.data.randaugment_magnitude,
      ft.data.randaugment_magnitude_std,
      ft.data.random_erasing,
    ) == (2, 9.0, 0.5, 0.25)
    assert (ft.optimizer.b1, ft.optimizer.b2, ft.optimizer.weight_decay) == (0.9, 0.999, 0.05)
    assert ft.optimizer.min_lr == 1e-6 and ft.warmup_epochs == 5 and ft.head_init_std == 2e-5
  scratch = finetune_config.get_config("digits,scratch")
  assert scratch.baseline == "random_init" and scratch.optimizer.layer_decay == 1.0
  assert knn_config.get_config("digits").knn_k == 20


def test_knn_monitor_runs_on_pretraining_parameters(pretrained):
  """The hook pretraining can call every `knn_every_steps`: encoder params in, metrics out."""
  config = tiny_config(knn_train_batches=2)
  mesh = sharding.make_mesh({"data": 8})
  batch_sharding = sharding.batch_sharding(mesh, sharding.DEFAULT_RULES)
  # In pretraining the parameters live on the run's mesh.
  params = jax.device_put(final_params(pretrained, 4), sharding.replicated(mesh))
  plan = make_plan(config, num_devices=8, process_count=1)  # the monitor's settings
  monitor = knn.knn_evaluator(
    plan, mesh, batch_sharding, features_fn=knn.monitor_features(plan), batch_size=64
  )
  with mesh_context(mesh, sharding.DEFAULT_RULES):
    metrics = monitor(params["encoder"])
  assert set(metrics) == {"knn_top1", "knn_top5"} and 0 <= metrics["knn_top1"] <= 100


def test_fine_tuning_encoder_without_final_norm_keeps_the_names():
  """Fine-tuning with pooling uses the Encoder without its final norm: the
  same parameter names minus `norm`, and the same tokens before it."""
  config = ModelConfig(channels=1, **TINY_MODEL).replace(depth=2)
  params = nn.unbox(Encoder(config).init(jax.random.key(0), images()))["params"]
  no_norm = nn.unbox(Encoder(config, final_norm=False).init(jax.random.key(0), images()))
  assert set(no_norm["params"]) == set(params) - {"norm"}
  tokens = Encoder(config, final_norm=False).apply(
    {"params": {k: v for k, v in params.items() if k != "norm"}}, images()
  )
  normed = nn.LayerNorm(epsilon=1e-6).apply({"params": params["norm"]}, tokens)
  np.testing.assert_allclose(normed, Encoder(config).apply({"params": params}, images()), atol=1e-6)


def test_linear_probe_command_line(pretrained, tmp_path):
  """The documented entry point: python -m mae_jax.main --config=configs/linprobe.py:digits."""
  import subprocess
  import sys

  from tests.helpers import REPO, TINY_OVERRIDES, environment

  workdir = str(tmp_path / "probe_cli")
  flags = dict(
    **{key.replace(".", "__"): value for key, value in TINY_OVERRIDES.items()},
    global_batch_size=16,
    num_train_steps=2,
    eval_batch_size=64,
    progress_bar="off",
    init_from=pretrained,
  )
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mae_jax.main",
      "--config=configs/linprobe.py:digits",
      f"--workdir={workdir}",
      *[f"--config.{key.replace('__', '.')}={value}" for key, value in flags.items()],
    ],
    cwd=REPO,
    env=environment(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Linear probe (cls features" in result.stdout
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 2


# --- classifiers out, in the authors' models_vit.py layout ------------------------


def models_vit_logits(
  state: dict, images_nhwc: np.ndarray, *, heads: int, pool: bool
) -> np.ndarray:
  """An independent PyTorch forward of the authors' models_vit.py classifier
  (timm's VisionTransformer) from its state dict: patch conv, cls token +
  position table, pre-norm blocks (fused qkv, exact GELU), then global pool
  + fc_norm or the cls token after norm, then the head (a probe's:
  BatchNorm1d in eval mode, then Linear)."""
  import torch
  import torch.nn.functional as F

  t = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
  x = torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())
  x = F.conv2d(
    x,
    t["patch_embed.proj.weight"],
    t["patch_embed.proj.bias"],
    stride=t["patch_embed.proj.weight"].shape[-1],
  )
  x = x.flatten(2).transpose(1, 2)
  x = torch.cat([t["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + t["pos_embed"]
  width = x.shape[-1]
  depth = len({k.split(".")[1] for k in t if k.startswith("blocks.")})
  for i in range(depth):
    b = f"blocks.{i}."
    h = F.layer_norm(x, (width,), t[b + "norm1.weight"], t[b + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, t[b + "attn.qkv.weight"], t[b + "attn.qkv.bias"])
    q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (width // heads) ** -0.5, dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(x.shape)
    x = x + F.linear(h, t[b + "attn.proj.weight"], t[b + "attn.proj.bias"])
    h = F.layer_norm(x, (width,), t[b + "norm2.weight"], t[b + "norm2.bias"], eps=1e-6)
    h = F.linear(
      F.gelu(F.linear(h, t[b + "mlp.fc1.weight"], t[b + "mlp.fc1.bias"])),
      t[b + "mlp.fc2.weight"],
      t[b + "mlp.fc2.bias"],
    )
    x = x + h
  if pool:
    feature = F.layer_norm(
      x[:, 1:].mean(dim=1), (width,), t["fc_norm.weight"], t["fc_norm.bias"], eps=1e-6
    )
  else:
    feature = F.layer_norm(x, (width,), t["norm.weight"], t["norm.bias"], eps=1e-6)[:, 0]
  if "head.1.weight" in t:
    feature = F.batch_norm(
      feature, t["head.0.running_mean"], t["head.0.running_var"], training=False, eps=1e-6
    )
    return F.linear(feature, t["head.1.weight"], t["head.1.bias"]).numpy()
  return F.linear(feature, t["head.weight"], t["head.bias"]).numpy()


def timm_classifier(state: dict, cfg: ModelConfig, num_classes: int, *, probe: bool):
  """timm's VisionTransformer as the authors' models_vit.py builds it (global
  pool + fc_norm for fine-tuning; for the probe the cls token after norm and
  a BatchNorm1d(affine=False) + Linear head, as main_linprobe.py), with the
  exported state loaded strictly: every key used, none missing."""
  import functools

  import torch
  from timm.models.vision_transformer import VisionTransformer

  model = VisionTransformer(
    img_size=cfg.image_size,
    patch_size=cfg.patch_size,
    in_chans=cfg.channels,
    num_classes=num_classes,
    embed_dim=cfg.width,
    depth=cfg.depth,
    num_heads=cfg.heads,
    mlp_ratio=cfg.mlp_ratio,
    qkv_bias=True,
    norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    global_pool="token" if probe else "avg",
    fc_norm=not probe,
  )
  if probe:
    bn = torch.nn.BatchNorm1d(cfg.width, affine=False, eps=1e-6)
    model.head = torch.nn.Sequential(bn, model.head)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
  return model.eval()


def timm_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def test_fine_tuned_and_probed_classifiers_export_to_models_vit(pretrained, tmp_path):
  """Exported to models_vit.py's names, they give mae_jax's logits on the
  same images in an independent PyTorch forward, and load with strict=True
  into timm's VisionTransformer with the same logits; transformers is refused."""
  from mae_jax.convert import load_state_dict
  from mae_jax.convert.__main__ import main as convert_main
  from mae_jax.evaluate.encoders import frozen_encoder
  from mae_jax.jobs.linprobe import probe_logits

  config = eval_config(finetune_config, init_from=pretrained)
  run_job(config, str(tmp_path / "finetune"))
  checkpoints = str(tmp_path / "finetune" / "checkpoints")
  output = str(tmp_path / "finetuned.pth")
  assert convert_main([f"--input={checkpoints}", f"--output={output}"]) == 0
  state = load_state_dict(output)
  assert {"fc_norm.weight", "head.weight", "pos_embed"} <= set(state) and "norm.weight" not in state
  x = np.asarray(images(n=3))
  model_config = ModelConfig(**{**TINY_MODEL, "image_size": 16, "channels": 1})
  abstract = jax.eval_shape(lambda: ViTClassifier(model_config, 10).init(jax.random.key(0), x))
  restored = checkpointing.restore_state(checkpoints, {"params": nn.unbox(abstract["params"])})[
    "params"
  ]
  ours = ViTClassifier(model_config, 10).apply({"params": restored}, x)
  theirs = models_vit_logits(state, x, heads=model_config.heads, pool=True)
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-5, rtol=1e-5)
  timm_model = timm_classifier(state, model_config, 10, probe=False)
  np.testing.assert_allclose(timm_logits(timm_model, x), np.asarray(ours), atol=1e-5, rtol=1e-5)
  with pytest.raises(Exception, match="no classifier head"):
    convert_main([f"--input={checkpoints}", f"--output={tmp_path / 'hf'}", "--layout=transformers"])

  probe_config = eval_config(linprobe_config, init_from=pretrained, cache_features=False)
  run_job(probe_config, str(tmp_path / "probe"))
  probe_checkpoints = str(tmp_path / "probe" / "checkpoints")
  probe_output = str(tmp_path / "probe.safetensors")
  assert convert_main([f"--input={probe_checkpoints}", f"--output={probe_output}"]) == 0
  state = load_state_dict(probe_output)
  assert {"norm.weight", "head.0.running_var", "head.1.weight"} <= set(state)
  plan = make_eval_plan(probe_config, num_devices=1, process_count=1)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  features_fn, encoder = frozen_encoder(probe_config, plan, mesh, jax.random.key(0))
  head_state = checkpointing.restore_state(
    probe_checkpoints,
    {
      "params": {
        "head": {
          "linear": {
            "kernel": jax.ShapeDtypeStruct((32, 10), jnp.float32),
            "bias": jax.ShapeDtypeStruct((10,), jnp.float32),
          }
        }
      },
      "batch_stats": {"bn": {n: jax.ShapeDtypeStruct((32,), jnp.float32) for n in ("mean", "var")}},
    },
  )
  probe = linprobe.ProbeState(
    step=0,
    params=head_state["params"]["head"],
    batch_stats=head_state["batch_stats"],
    opt_state=None,
  )
  pixels = np.clip(x * 40 + 128, 0, 255).astype(np.uint8)  # the pipeline's uint8 images
  ours = probe_logits(ProbeHead(10), features_fn)(probe, {"image": jnp.asarray(pixels)}, encoder)
  normalised = np.asarray(PixelNormalization.of(probe_config.data)(jnp.asarray(pixels)))
  theirs = models_vit_logits(state, normalised, heads=model_config.heads, pool=False)
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-4, rtol=1e-4)
  timm_probe = timm_classifier(state, model_config, 10, probe=True)
  np.testing.assert_allclose(
    timm_logits(timm_probe, normalised), np.asarray(ours), atol=1e-4, rtol=1e-4
  )


def test_rectangular_images_through_pretraining_and_every_evaluation_job(pretrained, tmp_path):
  """16x24 images (a 4x6 patch grid): a digits pretraining run with its
  k-NN monitor and reconstructions; then fine-tuning, the probe and k-NN at
  16x24 from the square (16 px) checkpoint, whose table is resized per axis."""
  from mae_jax.model.pos_embed import interpolate_pos_embed, sincos_2d

  rect = (16, 24)
  config = tiny_config(num_train_steps=4, checkpoint_every_steps=4, knn_every_steps=4)
  config.model.image_size = config.data.image_size = rect
  workdir = str(tmp_path / "pretrain_16x24")
  run_job(config, workdir)
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.isfinite([line["eval_loss"] for line in lines if "eval_loss" in line]).all()
  assert [line for line in lines if "knn_top1" in line]
  assert os.path.exists(os.path.join(workdir, "reconstructions.png"))
  assert checkpointing.read_metadata(os.path.join(workdir, "checkpoints"))["model"][
    "image_size"
  ] == list(rect)

  def at_rect(module, **changes):
    evaluation = eval_config(module, init_from=pretrained, **changes)
    evaluation.model.image_size = evaluation.data.image_size = rect
    return evaluation

  finetune = at_rect(finetune_config, num_train_steps=2, checkpoint_every_steps=2)
  finetuned = str(tmp_path / "finetune_16x24")
  assert run_job(finetune, finetuned)["step"] == 2
  table = jax.ShapeDtypeStruct((1, 25, 32), jnp.float32)
  trained = checkpointing.restore_state(
    os.path.join(finetuned, "checkpoints"), {"params": {"encoder": {"pos_embed": table}}}, step=2
  )["params"]["encoder"]["pos_embed"]
  start = interpolate_pos_embed(sincos_2d(32, 4)[None], (4, 6), old_grid=4)
  assert 0 < np.abs(np.asarray(trained) - start).max() < 0.1
  assert 0 <= run_job(at_rect(linprobe_config), str(tmp_path / "probe_16x24"))["top1"] <= 100
  assert 0 <= run_job(at_rect(knn_config), str(tmp_path / "knn_16x24"))["top1"] <= 100
