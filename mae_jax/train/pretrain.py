"""MAE pretraining as one function: `train_and_evaluate(config, workdir)`.

Reads top to bottom: plan (validate the config) -> mesh -> model and
optimizer -> abstract state and its shardings -> resume from the workdir,
or initialise -> jitted train step with donated state -> loop with logging,
evaluation (and the k-NN monitor, if on) and checkpoints -> reconstruction
picture.

Resume order: the workdir's own newest checkpoint, else `config.init_from`
(parameters only), else a fresh initialisation.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from mae_jax import checkpointing, sharding
from mae_jax import data as input_pipeline
from mae_jax.errors import CheckpointError, WorkdirError
from mae_jax.metrics import MetricsWriter
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.train import optim
from mae_jax.train import plan as plan_lib
from mae_jax.train.nonfinite import FiniteCheck
from mae_jax.train.preemption import PreemptionWatcher, save_and_stop
from mae_jax.train.state import TrainState
from mae_jax.train.step import make_eval_step, make_train_step
from mae_jax.visualize import reconstruction_panels, save_reconstructions


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pretrains (or resumes) and returns the final metrics."""
  plan = plan_lib.make_plan(
    config, num_devices=jax.device_count(), process_count=jax.process_count()
  )
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, plan.mesh_shape)))
  is_main = jax.process_index() == 0
  check_workdir_writable(workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  metadata = run_metadata(config, plan)
  mngr = checkpointing.manager(
    checkpoint_dir,
    max_to_keep=config.keep_checkpoints,
    keep_period=config.keep_every_steps,
    enable_async=config.async_checkpointing,
  )
  # Whatever happens (an error, a preemption), a save in flight completes:
  # saved work is never lost to an exception. A save that fails (disk full)
  # raises CheckpointSaveError naming the checkpoints that are still intact.
  with checkpointing.completing_saves(mngr):
    resume_step = mngr.latest_step()
    if resume_step is not None:
      check_same_experiment(checkpoint_dir, mngr, resume_step, metadata)
    write_run_info(workdir, config, plan, mesh, resume_step, enabled=is_main)
    final, picture = _pretrain(config, workdir, plan, mesh, mngr, metadata, resume_step, is_main)
  if is_main:
    knn = f", k-NN top-1 {final['knn_top1']:.1f} %" if "knn_top1" in final else ""
    print(
      f"\nPretraining finished at step {final['step']}: eval loss "
      f"{final.get('eval_loss', float('nan')):.4f} (trivial predictor "
      f"{final.get('eval_baseline_loss', float('nan')):.4f}){knn}.\n"
      f"  checkpoints:     {checkpoint_dir}\n"
      f"  metrics:         {os.path.join(workdir, 'metrics.jsonl')}\n"
      f"  tensorboard:     {os.path.join(workdir, 'tensorboard')}\n"
      f"  reconstructions: {picture}",
      flush=True,
    )
  return final


def _pretrain(config, workdir, plan, mesh, mngr, metadata, resume_step, is_main):
  model = MaskedAutoencoder(plan.model)
  schedule, tx = optim.from_config(
    config, warmup_steps=plan.warmup_steps, total_steps=plan.total_steps
  )
  init_key, seed_key = jax.random.split(jax.random.key(config.seed))
  state_shardings, abstract_state = state_layout(model, tx, mesh, plan.rules)
  batch_sharding = sharding.batch_sharding(mesh, plan.rules)
  replicated = sharding.replicated(mesh)

  with mesh_context(mesh, plan.rules):
    init = jax.jit(lambda key: create_state(model, tx, key), out_shardings=state_shardings)
    if resume_step is not None:
      logging.info("Resuming from %s step %d.", mngr.directory, resume_step)
      state = restore_train_state(
        str(mngr.directory), resume_step, with_shardings(abstract_state, state_shardings)
      )
    elif config.init_from:
      state = init(init_key)
      state = state.replace(
        params=load_init_from(config.init_from, plan.model, state.params, state_shardings.params)
      )
    else:
      logging.info("Initialising from scratch (seed %d).", config.seed)
      state = init(init_key)
    train_step = jax.jit(
      make_train_step(
        model, tx, schedule, grad_accum_steps=config.grad_accum_steps, seed_key=seed_key
      ),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
    )
    eval_step = jax.jit(
      make_eval_step(model, seed_key=seed_key),
      in_shardings=(state_shardings.params, batch_sharding, replicated),
      out_shardings=replicated,
    )
    loop = TrainingLoop(
      config,
      plan,
      workdir,
      mngr,
      metadata,
      batch_sharding,
      is_main,
      knn_monitor=make_knn_monitor(config, plan, mesh, batch_sharding),
    )
    final = loop.run(state, train_step, eval_step)
    picture = write_reconstructions(
      config, plan, workdir, model, loop.final_params, seed_key, batch_sharding, replicated, is_main
    )
  return final, picture


def make_knn_monitor(config, plan, mesh, batch_sharding):
  """encoder params -> {"knn_top1", "knn_top5"}, or None when config.knn_every_steps=0.

  Batches of the eval micro-batch size, which the training step already
  fits in memory. No random numbers: the train stream is left untouched.
  """
  if config.knn_every_steps <= 0:
    return None
  # Imported here: mae_jax.evaluate imports this module.
  from mae_jax.evaluate import knn

  return knn.make_knn_monitor(
    config,
    plan.model,
    mesh,
    batch_sharding,
    batch_size=plan.micro_batch_size,
    num_classes=plan.num_classes,
  )


def check_workdir_writable(workdir: str) -> None:
  """Fails at once, not at the first checkpoint an hour later."""
  probe = epath.Path(workdir, f".write_test_{jax.process_index()}")
  try:  # epath: workdirs may be gs:// buckets.
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as error:
    raise WorkdirError(
      f"cannot write to --workdir={workdir!r} ({error}); choose a writable directory or bucket."
    ) from error


def restore_train_state(directory: str, step: int, abstract_state: TrainState) -> TrainState:
  try:
    restored = checkpointing.restore_state(directory, abstract_state.to_checkpoint(), step=step)
  except Exception as error:  # orbax/tensorstore raise many types for a damaged file
    raise CheckpointError(
      f"checkpoint step {step} in {directory} could not be read ({type(error).__name__}: "
      f"{error}). It is damaged or was written by another program. Nothing was changed: "
      f"move {os.path.join(directory, str(step))} aside to resume from the previous step, "
      "or use a new --workdir."
    ) from error
  return TrainState.from_checkpoint(restored)


def load_init_from(path: str, model_config, params, param_shardings):
  """Parameters from `config.init_from` (a run or a converted checkpoint).

  Groups the checkpoint lacks (e.g. the decoder of an encoder-only file)
  keep their fresh initialisation.
  """
  directory = checkpointing.resolve_checkpoint_dir(path)
  metadata = checkpointing.read_metadata(directory)
  checkpointing.check_architecture(directory, metadata, model_config)
  groups = checkpointing.saved_param_groups(directory) & set(params)
  saved_scanned = metadata.get("param_layout") == "layers"
  if saved_scanned != model_config.scan_layers:
    raise CheckpointError(
      f"{directory} stores {'scanned' if saved_scanned else 'per-layer'} parameters but "
      f"config.model.scan_layers={model_config.scan_layers}: set scan_layers to match, or "
      "re-export it with `python -m mae_jax.convert` (--scan_layers)."
    )
  abstract = {
    group: with_shardings(jax.eval_shape(lambda p=params[group]: p), param_shardings[group])
    for group in groups
  }
  restored = checkpointing.restore_state(directory, {"params": abstract})["params"]
  logging.info("Initialised %s from %s.", sorted(groups), directory)
  return {**params, **restored}


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules):
  """Mesh and logical-axis rules in scope while tracing, so the model's
  `with_logical_constraint` annotations become sharding constraints."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def create_state(
  model: MaskedAutoencoder, tx: optax.GradientTransformation, key: jax.Array, *, boxed: bool = False
) -> TrainState:
  cfg = model.config
  dummy = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
  params = model.init({"params": key, "masking": key}, dummy, train=False)["params"]
  if boxed:  # only used under eval_shape, to read the logical axis names
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None)
  params = nn.unbox(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_layout(model, tx, mesh, rules) -> tuple[TrainState, TrainState]:
  """(shardings, abstract state) of the train state, without allocating it."""
  key = jax.random.key(0)
  boxed = jax.eval_shape(lambda k: create_state(model, tx, k, boxed=True), key)
  param_shardings = sharding.logical_shardings(boxed.params, mesh, rules)
  abstract = jax.eval_shape(lambda k: create_state(model, tx, k), key)
  replicated = sharding.replicated(mesh)
  # Optimizer moments mirror the parameters; counts and the like replicate.
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract.opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  return shardings, abstract


def with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )


# The key under which `device_prefetch` passes the host's count of replaced
# (undecodable) images along with each batch; the loop pops it.
NUM_REPLACED = "num_replaced"


def device_prefetch(local_batches: Iterator[dict], batch_sharding, size: int) -> Iterator[dict]:
  """Keeps `size` batches already transferred to the devices ahead of the
  step that consumes them, so host-to-device copies overlap compute."""
  queue: collections.deque = collections.deque()
  for local_batch in local_batches:
    global_batch = to_global(local_batch, batch_sharding)
    # Host-side: this host's images replaced because they did not decode.
    global_batch[NUM_REPLACED] = int(np.sum(local_batch.get("replaced", 0)))
    queue.append(global_batch)
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def to_global(local_batch: dict, batch_sharding) -> dict:
  """Per-host numpy batch -> global arrays split over the data axes."""
  return {
    key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(value))
    for key, value in local_batch.items()
    if key in ("image", "mask")
  }


class TrainingLoop:
  """The step loop: logging, periodic evaluation, k-NN monitor and checkpoints."""

  def __init__(
    self, config, plan, workdir, mngr, metadata, batch_sharding, is_main, *, knn_monitor=None
  ):
    self.config, self.plan, self.workdir = config, plan, workdir
    self.mngr, self.metadata = mngr, metadata
    self.batch_sharding, self.is_main = batch_sharding, is_main
    self.knn_monitor = knn_monitor
    self.final_params = None

  def run(self, state: TrainState, train_step, eval_step) -> dict:
    config, plan = self.config, self.plan
    start = int(jax.device_get(state.step))
    self.writer = MetricsWriter(self.workdir, start_step=start, enabled=self.is_main)
    total = plan.total_steps
    if start >= total:
      logging.info("Checkpoint step %d >= total steps %d: nothing to train.", start, total)
    train_iter = device_prefetch(
      input_pipeline.make_iterator(
        config.data,
        split=config.data.train_split,
        global_batch_size=config.global_batch_size,
        train=True,
        seed=config.seed,
        start_step=start,
      ),
      self.batch_sharding,
      size=config.device_prefetch,
    )
    progress = make_progress(config.progress_bar, start, total, self.is_main)
    watcher = PreemptionWatcher()
    try:
      return self._run(state, train_step, eval_step, train_iter, progress, watcher, start, total)
    finally:
      watcher.close()
      progress.close()
      self.writer.close()

  def _run(self, state, train_step, eval_step, train_iter, progress, watcher, start, total):
    config = self.config
    pending: list[dict] = []
    # Stops or counts non-finite steps at each log step and before every save.
    finite_check = FiniteCheck(config.nonfinite, self.mngr)
    final: dict = {"step": start}
    # Throughput counts train steps only: evaluation and checkpoint time is
    # subtracted from the interval (`paused`).
    interval_start, input_wait, interval_steps, paused = time.perf_counter(), 0.0, 0, 0.0
    replaced = 0  # this host's undecodable images replaced in the interval
    for step in range(start, total):
      fetch_start = time.perf_counter()
      batch = next(train_iter)
      input_wait += time.perf_counter() - fetch_start
      replaced += batch.pop(NUM_REPLACED)
      state, metrics = train_step(state, batch)
      pending.append(metrics)
      interval_steps += 1
      done = step + 1
      finite_check.record(done, metrics)
      if watcher.reached(done):
        finite_check.check()
        save_and_stop(self.mngr, done, state.to_checkpoint(), self.metadata, progress.log)
      if step == start:  # the first step includes compilation: time it apart
        jax.block_until_ready(metrics)
        compile_seconds = time.perf_counter() - interval_start
        logging.info("First step (with compilation) took %.1f s.", compile_seconds)
        self.writer.write(done, {"compile_seconds": compile_seconds})
        interval_start, input_wait, interval_steps = time.perf_counter(), 0.0, 0
        pending = [metrics]
      last = done == total
      if done % config.log_every_steps == 0 or last:
        summary = summarise(pending)
        summary["skipped_steps"] = finite_check.check()
        # Summed over hosts; every host logs at the same steps.
        summary["replaced_images"] = int(np.sum(multihost_utils.process_allgather(replaced)))
        elapsed = time.perf_counter() - interval_start - paused
        if interval_steps:
          summary["images_per_sec"] = interval_steps * config.global_batch_size / elapsed
          summary["input_wait_fraction"] = input_wait / elapsed
        self.writer.write(done, summary)
        progress.update(done, summary)
        final.update(summary)
        pending, interval_steps, input_wait, paused, replaced = [], 0, 0.0, 0.0, 0
        interval_start = time.perf_counter()
      pause_start = time.perf_counter()
      if done % config.eval_every_steps == 0 or last:
        eval_metrics = self.evaluate(state.params, eval_step)
        self.writer.write(done, eval_metrics)
        progress.log(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        final.update(eval_metrics)
      if self.knn_monitor and (done % config.knn_every_steps == 0 or last):
        # Before the next step donates the state's buffers; synchronous.
        knn_start = time.perf_counter()
        knn_metrics = self.knn_monitor(state.params["encoder"])
        self.writer.write(done, knn_metrics)
        progress.log(
          f"step {done}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in knn_metrics.items())
          + f" ({time.perf_counter() - knn_start:.1f} s)"
        )
        final.update(knn_metrics)
      if done % config.checkpoint_every_steps == 0 or last:
        finite_check.check()
        checkpointing.save(self.mngr, done, state.to_checkpoint(), self.metadata)
      paused += time.perf_counter() - pause_start
      final["step"] = done
    if start >= total:
      final.update(self.evaluate(state.params, eval_step))
      if self.knn_monitor:
        final.update(self.knn_monitor(state.params["encoder"]))
    self.final_params = state.params
    return final

  def evaluate(self, params, eval_step) -> dict:
    config = self.config
    eval_iter = input_pipeline.make_iterator(
      config.data,
      split=config.data.eval_split,
      global_batch_size=self.plan.micro_batch_size,
      train=False,
      seed=config.seed,
    )
    totals = None
    for index, local_batch in enumerate(eval_iter):
      if 0 <= config.eval_batches <= index:
        break
      sums = eval_step(
        params, to_global(local_batch, self.batch_sharding), jnp.asarray(index, jnp.int32)
      )
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    removed = max(float(totals["removed_patches"]), 1.0)
    return {
      "eval_loss": float(totals["loss_sum"]) / removed,
      "eval_baseline_loss": float(totals["baseline_sum"]) / removed,
    }


def summarise(pending: list[dict]) -> dict:
  """Means over the logging interval, except `loss` and `learning_rate`: the
  logged step's own values, so a resumed run logs the very same numbers
  even when it restarts mid-interval (`loss_avg` is the interval mean)."""
  stacked = jax.device_get(pending)
  summary = {key: float(np.mean([m[key] for m in stacked])) for key in stacked[0]}
  summary["loss_avg"] = summary["loss"]
  summary["loss"] = float(stacked[-1]["loss"])
  summary["learning_rate"] = float(stacked[-1]["learning_rate"])
  return summary


def write_reconstructions(
  config, plan, workdir, model, params, seed_key, batch_sharding, replicated, is_main
) -> str:
  """reconstructions.png for the first held-out images."""
  count = config.num_reconstructions
  path = os.path.join(workdir, "reconstructions.png")
  if count <= 0:
    return "(disabled: config.num_reconstructions=0)"
  eval_iter = input_pipeline.make_iterator(
    config.data,
    split=config.data.eval_split,
    global_batch_size=plan.micro_batch_size,
    train=False,
    seed=config.seed,
  )
  batch = to_global(next(eval_iter), batch_sharding)

  @jax.jit
  def predict(params, images):
    out = model.apply(
      {"params": params},
      images,
      rngs={"masking": jax.random.fold_in(seed_key, 0xFACE)},
      train=False,
    )
    # Replicated outputs: every host holds the full arrays.
    return jax.lax.with_sharding_constraint((images, out.pred, out.mask), replicated)

  images, pred, mask = jax.device_get(predict(params, batch["image"]))
  if is_main:
    panels = reconstruction_panels(
      images[:count],
      pred[:count],
      mask[:count],
      patch_size=plan.model.patch_size,
      norm_pix_loss=plan.model.norm_pix_loss,
      mean=config.data.mean,
      std=config.data.std,
    )
    caption = f"held-out images, mask ratio {plan.model.mask_ratio}" + (
      "; norm-pix: drawn with the TRUE patch mean/std" if plan.model.norm_pix_loss else ""
    )
    save_reconstructions(path, panels, caption=caption)
  return path


def run_metadata(config, plan) -> dict:
  """What a checkpoint records about the run that wrote it."""
  return {
    "model": checkpointing.model_metadata(plan.model),
    "param_layout": "layers" if plan.model.scan_layers else "layer_i",
    "experiment": experiment_identity(config),
    "source": "mae_jax pretraining",
    "config": json.loads(config.to_json_best_effort()),
  }


def experiment_identity(config) -> dict:
  """The settings a resumed run must share with the run that wrote the workdir."""
  arch = {name: config.model[name] for name in checkpointing.ARCHITECTURE_FIELDS}
  return {
    "model": arch,
    "data_source": config.data.source,
    "data_name": config.data.name,
    "seed": config.seed,
    "global_batch_size": config.global_batch_size,
  }


def check_same_experiment(directory, mngr, step, metadata) -> None:
  import orbax.checkpoint as ocp

  saved = mngr.restore(
    step, args=ocp.args.Composite(**{checkpointing.METADATA: ocp.args.JsonRestore()})
  )[checkpointing.METADATA]
  saved_identity, current = saved.get("experiment", {}), metadata["experiment"]
  differences = [
    f"{key}: workdir {saved_identity.get(key)!r} vs config {current[key]!r}"
    for key in current
    if saved_identity.get(key) != current[key]
  ]
  if differences:
    raise WorkdirError(
      f"the workdir's checkpoints ({directory}, step {step}) belong to another experiment: "
      + "; ".join(differences)
      + ". Nothing was changed. Use a new --workdir, or the config that wrote it."
    )


def write_run_info(workdir, config, plan, mesh, resume_step, *, enabled: bool) -> None:
  """The resolved config and the run's environment, at the top of the log and in the workdir."""
  import flax
  import grain
  import orbax.checkpoint as ocp

  info = {
    "versions": {
      "jax": jax.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "orbax": getattr(ocp, "__version__", "?"),
      "grain": getattr(grain, "__version__", "?"),
      "python": sys.version.split()[0],
    },
    "devices": {
      "kind": jax.devices()[0].device_kind,
      "count": jax.device_count(),
      "processes": jax.process_count(),
      "platform": jax.default_backend(),
    },
    "mesh": dict(mesh.shape),
    "resume": (
      f"resuming from step {resume_step}" if resume_step is not None else "starting from scratch"
    ),
    "plan": {
      "total_steps": plan.total_steps,
      "steps_per_epoch": plan.steps_per_epoch,
      "warmup_steps": plan.warmup_steps,
      "micro_batch_size": plan.micro_batch_size,
      "train_examples": plan.num_train_examples,
      "eval_examples": plan.num_eval_examples,
    },
  }
  logging.info("Run info: %s", json.dumps(info))
  logging.info("Config:\n%s", config)
  if enabled:
    epath.Path(workdir, "config.json").write_text(config.to_json_best_effort(indent=2))
    epath.Path(workdir, "run_info.json").write_text(json.dumps(info, indent=2))


class _Progress:
  """tqdm bar on a terminal, plain log lines otherwise."""

  def __init__(self, bar, start, total):
    self.bar, self.start, self.total = bar, start, total

  def update(self, step: int, summary: dict) -> None:
    text = (
      f"loss {summary['loss_avg']:.4f} lr {summary['learning_rate']:.2e} "
      f"{summary.get('images_per_sec', 0):.0f} img/s"
    )
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix_str(text)
    else:
      print(f"step {step}/{self.total}: {text}", flush=True)

  def log(self, text: str) -> None:
    (self.bar.write if self.bar is not None else print)(text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


class _Silent(_Progress):
  def update(self, step, summary):
    pass

  def log(self, text):
    pass


def make_progress(mode: str, start: int, total: int, is_main: bool) -> _Progress:
  if not is_main:
    return _Silent(None, start, total)
  if mode == "on" or (mode == "auto" and sys.stderr.isatty()):
    import tqdm

    return _Progress(
      tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True), start, total
    )
  return _Progress(None, start, total)
