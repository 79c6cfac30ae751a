"""Pretraining end to end on the bundled digits, with a tiny model.

Covers the job's outputs, exact resumption, the experiment guard, config
validation before compilation, and that the sharded train step gives the
same result on every mesh layout of the 8 fake CPU devices.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import pretrain as pretrain_config
from mae_jax.core import checkpointing, optim, sharding
from mae_jax.core.batches import to_global
from mae_jax.core.pixels import PixelNormalization
from mae_jax.core.plan import make_plan
from mae_jax.core.state import create_state, mesh_context, state_specs
from mae_jax.core.train_step import make_train_step
from mae_jax.jobs.pretrain import train_and_evaluate
from mae_jax.jobs.pretrain_step import build_pretraining_step, pretraining_task
from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import MaskedAutoencoder
from tests.helpers import (
  apply_changes,
  final_params,
  nan_batch_at,
  tiny_config,
  tiny_model_config,
  without_key_bias,
)

# One grey channel; the steps normalise uint8 batches with it and take
# float batches as already normalised.
PIXELS = PixelNormalization(mean=(0.5,), std=(0.25,))


def test_config_presets_and_options():
  digits = pretrain_config.get_config("digits")
  assert digits.data.source == "digits" and digits.model.channels == 1
  base = pretrain_config.get_config("vit_base")
  assert base.global_batch_size == 4096 and base.num_epochs == 800
  assert base.warmup_epochs == 40 and base.optimizer.base_lr == 1.5e-4
  assert base.optimizer.b2 == 0.95 and base.optimizer.weight_decay == 0.05
  assert base.model.norm_pix_loss and base.model.mask_ratio == 0.75
  assert base.data.name == "imagenet2012"
  huge = pretrain_config.get_config("vit_huge,epochs=1600,batch=1024")
  assert huge.model.patch_size == 14 and huge.num_epochs == 1600
  assert huge.global_batch_size == 1024
  local = pretrain_config.get_config("vit_large,runlocal")
  assert local.data.source == "digits" and local.global_batch_size == 8
  assert local.model.width == 1024 and local.data.channels == 3
  with pytest.raises(ValueError, match="preset 'vit_giant'"):
    pretrain_config.get_config("vit_giant")
  with pytest.raises(ValueError, match="option 'epoch'"):
    pretrain_config.get_config("vit_base,epoch=3")


def test_pretraining_writes_every_output(tmp_path):
  workdir = str(tmp_path / "run")
  final = train_and_evaluate(tiny_config(), workdir)
  assert final["step"] == 6 and np.isfinite(final["eval_loss"])
  assert sorted(
    checkpointing.manager(os.path.join(workdir, "checkpoints"), read_only=True).all_steps()
  ) == [3, 6]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines] == [2, 4, 6]
  for key in ("loss", "learning_rate", "images_per_sec", "grad_norm"):
    assert all(np.isfinite(l[key]) for l in train_lines), key
  assert [l["step"] for l in lines if "eval_loss" in l] == [3, 6]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 0
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["global_batch_size"] == 16
  assert "resume" in json.load(open(os.path.join(workdir, "run_info.json")))


def test_resume_after_a_crash_is_exact(tmp_path):
  """A run that lost its step-6 checkpoint resumes from step 3 and ends with
  bit-identical parameters (same data order, same masks)."""
  # Logging aligned with checkpoints, so each logged mean covers the same steps.
  config = tiny_config(log_every_steps=3)
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  uninterrupted = final_params(workdir, 6)
  losses = {
    l["step"]: l["loss"] for l in map(json.loads, open(f"{workdir}/metrics.jsonl")) if "loss" in l
  }
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  train_and_evaluate(config, workdir)
  resumed = final_params(workdir, 6)
  jax.tree.map(np.testing.assert_array_equal, uninterrupted, resumed)
  lines = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]
  assert [l["step"] for l in lines if "loss" in l] == [3, 6]
  assert {l["step"]: l["loss"] for l in lines if "loss" in l} == losses


def test_workdir_of_another_experiment_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config(num_train_steps=3), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  other = tiny_config(num_train_steps=3)
  other.model.width = 64
  with pytest.raises(ValueError, match="another experiment.*width"):
    train_and_evaluate(other, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


@pytest.mark.parametrize(
  "change, message",
  [
    (dict(global_batch_size=12), "multiple of 8"),
    (dict(grad_accum_steps=3), "not divisible by config.grad_accum_steps"),
    (dict(mesh={"data": 16, "fsdp": 1, "tensor": 1}), "needs 16 devices"),
    (dict(mesh={"data": 3, "fsdp": -1, "tensor": 1}), "does not divide"),
    (dict(num_train_steps=0, num_epochs=0.0), "num_epochs"),
    (dict(optimizer={"base_lr": -1.0}), "base_lr"),
    (dict(model={"mask_ratio": 1.0}), "mask_ratio"),
    (dict(data={"image_size": 32}), "must agree"),
    (dict(global_batch_size=4096), "larger than the 1497 training images"),
  ],
)
def test_bad_configs_fail_before_compiling(change, message):
  config = apply_changes(tiny_config(), change)
  with pytest.raises(ValueError, match=message):
    make_plan(config, num_devices=8, process_count=1)


def _steps_on_mesh(mesh, batch, steps=2):
  model = MaskedAutoencoder(tiny_model_config(depth=2))
  schedule = optax.constant_schedule(1e-3)
  tx = optim.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.05)
  program = build_pretraining_step(
    model.config,
    schedule,
    tx,
    mesh,
    sharding.DEFAULT_RULES,
    global_batch_size=batch["image"].shape[0],
    grad_accum_steps=2,
    seed=1,
    pixels=PIXELS,
  )
  state = program.initial_state()
  with mesh_context(mesh, sharding.DEFAULT_RULES):
    for _ in range(steps):
      state, metrics = program.step(state, to_global(batch, program.batch_sharding))
  return jax.device_get(state.params), float(metrics["loss"])


def test_train_step_is_the_same_on_every_mesh():
  """data-only, fsdp-only and data x fsdp meshes over 8 devices reproduce one device."""
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  rng = np.random.default_rng(0)
  batch = {
    # uint8, as the pipeline sends them: normalised inside the sharded step.
    "image": rng.integers(0, 256, size=(16, 16, 16, 1)).astype(np.uint8),
    "mask": np.ones((16,), np.float32),
  }
  devices = jax.devices()
  reference, reference_loss = _steps_on_mesh(
    sharding.make_mesh({"data": 1}, devices=devices[:1]), batch
  )
  for layout in ({"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 4}, {"data": 4, "tensor": 2}):
    params, loss = _steps_on_mesh(sharding.make_mesh(layout, devices=devices), batch)
    assert abs(loss - reference_loss) < 1e-5, layout
    jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(
        *without_key_bias(path, a, b), atol=2e-5, rtol=1e-4, err_msg=f"{layout} {path}"
      ),
      reference,
      params,
    )


def test_fsdp_shards_parameters_and_optimizer_state():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  model = MaskedAutoencoder(tiny_model_config())
  tx = optim.adamw(optax.constant_schedule(1e-3), b1=0.9, b2=0.95, weight_decay=0.05)
  shardings, _ = state_specs(model, tx, mesh, sharding.DEFAULT_RULES)
  fc1 = shardings.params["encoder"]["blocks"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert fc1.spec[0] == "fsdp"
  adam_mu = shardings.opt_state[0][0].mu["encoder"]["blocks"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert adam_mu.spec == fc1.spec


def test_weight_decay_mask_follows_the_reference():
  model = MaskedAutoencoder(tiny_model_config())
  params = jax.eval_shape(
    lambda k: create_state(model, optax.identity(), k), jax.random.key(0)
  ).params
  mask = optim.decay_mask(params)
  assert mask["encoder"]["cls_token"] and mask["decoder"]["mask_token"]
  assert mask["encoder"]["patch_embed"]["kernel"]
  assert mask["encoder"]["blocks"]["layer_0"]["attn"]["qkv"]["kernel"]
  assert not mask["encoder"]["blocks"]["layer_0"]["attn"]["qkv"]["bias"]
  assert not mask["encoder"]["norm"]["scale"] and not mask["decoder"]["pred"]["bias"]


def test_learning_rate_schedule_matches_the_reference_formula():
  import math

  peak = optim.peak_learning_rate(1.5e-4, 4096)
  assert peak == pytest.approx(2.4e-3)
  schedule = optim.learning_rate_schedule(peak_lr=peak, warmup_steps=40, total_steps=800)
  for step in (0, 10, 39, 40, 100, 400, 799):
    # main_pretrain.py's adjust_learning_rate, with epochs counted in steps
    if step < 40:
      expected = peak * step / 40
    else:
      expected = peak * 0.5 * (1 + math.cos(math.pi * (step - 40) / (800 - 40)))
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_gradient_accumulation_equals_the_full_batch_step():
  model = MaskedAutoencoder(tiny_model_config())
  schedule = optax.constant_schedule(1e-3)
  tx = optim.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.05)
  state = create_state(model, tx, jax.random.key(0))
  batch = {"image": jnp.asarray(np.random.default_rng(0).normal(size=(16, 16, 16, 1)), jnp.float32)}
  results = {}
  for accum in (1, 4):
    step = jax.jit(
      make_train_step(
        pretraining_task(model, PIXELS),
        tx,
        schedule,
        grad_accum_steps=accum,
        seed_key=jax.random.key(1),
      )
    )
    results[accum] = step(state, batch)
  (full, full_metrics), (accumulated, accumulated_metrics) = results[1], results[4]
  assert float(full_metrics["loss"]) == pytest.approx(float(accumulated_metrics["loss"]), rel=1e-6)
  assert float(full_metrics["grad_norm"]) == pytest.approx(
    float(accumulated_metrics["grad_norm"]), rel=1e-5
  )
  jax.tree_util.tree_map_with_path(
    lambda path, a, b: np.testing.assert_allclose(
      *without_key_bias(path, a, b), atol=1e-6, rtol=1e-5
    ),
    full.params,
    accumulated.params,
  )


def test_bfloat16_compute_keeps_float32_master_weights():
  config = tiny_model_config()
  batch = {"image": jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 1)), jnp.float32)}
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model = MaskedAutoencoder(config.replace(dtype=dtype))
    schedule = optax.constant_schedule(1e-3)
    tx = optim.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.05)
    state = create_state(model, tx, jax.random.key(0))
    step = jax.jit(
      make_train_step(
        pretraining_task(model, PIXELS),
        tx,
        schedule,
        grad_accum_steps=1,
        seed_key=jax.random.key(1),
      )
    )
    state, metrics = step(state, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(
      x.dtype == jnp.float32
      for x in jax.tree.leaves(state.opt_state)
      if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)
    )
    losses[dtype] = float(metrics["loss"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)


def test_nan_batch_stops_the_run_before_any_bad_checkpoint(tmp_path):
  from mae_jax.core.nonfinite import NonFiniteError

  config = tiny_config()
  workdir = str(tmp_path / "run")
  with pytest.raises(NonFiniteError, match="step 4 .*Last good checkpoint: step 3"):
    train_and_evaluate(config, workdir, train_batches=nan_batch_at(config, 3))  # the 4th step
  assert sorted(
    checkpointing.manager(os.path.join(workdir, "checkpoints"), read_only=True).all_steps()
  ) == [3]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final_params(workdir, 3)))


def test_nan_batch_is_skipped_and_counted_when_asked(tmp_path):
  config = tiny_config(nonfinite="skip")
  workdir = str(tmp_path / "run")
  final = train_and_evaluate(config, workdir, train_batches=nan_batch_at(config, 3))
  assert final["step"] == 6 and final["skipped_steps"] == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final_params(workdir, 6)))


def test_init_from_a_run_and_from_an_encoder_only_checkpoint(tmp_path):
  source = str(tmp_path / "source")
  train_and_evaluate(tiny_config(num_train_steps=3), source)
  source_params = final_params(source, 3)

  # From a pretraining workdir: every parameter starts from the source run.
  workdir = str(tmp_path / "from_run")
  config = tiny_config(num_train_steps=1, seed=7, init_from=source)
  config.optimizer.base_lr = 1e-12  # so step 1 leaves the restored values in place
  train_and_evaluate(config, workdir)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    source_params,
    final_params(workdir, 1),
  )

  # From an encoder-only checkpoint (as converted from mae_pretrain_vit_*.pth):
  # the encoder is restored, the decoder keeps its fresh initialisation.
  encoder_only = str(tmp_path / "encoder_only")
  model_config = MaskedAutoencoder(
    ModelConfig(**checkpointing.read_metadata(os.path.join(source, "checkpoints"))["model"])
  ).config
  checkpointing.write_params(
    encoder_only, {"encoder": source_params["encoder"]}, model_config, source="test"
  )
  workdir = str(tmp_path / "from_encoder")
  config.init_from = encoder_only
  train_and_evaluate(config, workdir)
  restored = final_params(workdir, 1)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    source_params["encoder"],
    restored["encoder"],
  )
  assert not np.allclose(
    source_params["decoder"]["pred"]["kernel"], restored["decoder"]["pred"]["kernel"]
  )


def test_init_from_converts_a_scanned_checkpoint_to_this_runs_layout(tmp_path):
  """One rule for every job: a checkpoint in the other layout is converted, not refused."""
  from mae_jax.model.stacking import unstack_layers

  source = str(tmp_path / "scanned")
  scanned = tiny_config(num_train_steps=2)
  scanned.model.scan_layers = True
  train_and_evaluate(scanned, source)
  config = tiny_config(num_train_steps=1, init_from=source)
  config.optimizer.base_lr = 1e-12  # so step 1 leaves the restored values in place
  workdir = str(tmp_path / "per_layer")
  train_and_evaluate(config, workdir)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
    unstack_layers(final_params(source, 2)),
    final_params(workdir, 1),
  )


def test_bad_init_from_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="nothing there"):
    train_and_evaluate(tiny_config(init_from=str(tmp_path / "nothing")), str(tmp_path / "a"))
  weights = tmp_path / "mae_pretrain_vit_base.pth"
  weights.write_bytes(b"torch")
  with pytest.raises(ValueError, match="is a file .a PyTorch file: convert it first"):
    train_and_evaluate(tiny_config(init_from=str(weights)), str(tmp_path / "a"))
  half_written = tmp_path / "half" / "checkpoints" / "5.orbax-checkpoint-tmp-123"
  half_written.mkdir(parents=True)
  with pytest.raises(ValueError, match="half-written"):
    train_and_evaluate(tiny_config(init_from=str(tmp_path / "half")), str(tmp_path / "b"))
  source = str(tmp_path / "source")
  train_and_evaluate(tiny_config(num_train_steps=3), source)
  other = tiny_config(init_from=source)
  other.model.width = 64
  with pytest.raises(ValueError, match="another architecture: width: checkpoint 32 vs config 64"):
    train_and_evaluate(other, str(tmp_path / "c"))


def test_damaged_checkpoint_is_a_clear_error_and_is_left_alone(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(num_train_steps=3)
  train_and_evaluate(config, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "3", "state")
  damaged = []
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, "r+b") as f:
          f.truncate(16)
        damaged.append(path)
  assert damaged
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(ValueError, match="step 3 .* could not be read"):
    train_and_evaluate(tiny_config(num_train_steps=6), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_unwritable_workdir_fails_at_once(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="cannot write to --workdir"):
    train_and_evaluate(tiny_config(), str(blocker / "run"))
