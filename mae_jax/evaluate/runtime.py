"""Plumbing the evaluation jobs share: labelled global batches, accuracy,
feature extraction, the workdir (checkpoints, run info, results.json)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from mae_jax import checkpointing, sharding
from mae_jax import data as input_pipeline
from mae_jax.errors import ConfigError
from mae_jax.evaluate.plan import make_eval_plan
from mae_jax.train import optim
from mae_jax.train.pretrain import check_same_experiment, write_run_info

PROTOCOLS = {"linprobe": "linear_probe", "finetune": "finetune", "knn": "knn"}


# ---------------------------------------------------------------- batches --


def check_labels(labels: np.ndarray, mask: np.ndarray, num_classes: int, where: str) -> None:
  real = np.asarray(labels)[np.asarray(mask) > 0]
  if real.size and (real.min() < 0 or real.max() >= num_classes):
    outside = sorted({int(label) for label in real[(real < 0) | (real >= num_classes)]})
    raise ConfigError(
      f"{where}: labels {outside} "
      f"are outside the head's {num_classes} classes (0..{num_classes - 1}); "
      "set config.num_classes, or fix the dataset's labels."
    )


def labelled_batch(local: dict, batch_sharding, num_classes: int, where: str) -> dict:
  """Per-host numpy batch -> global arrays of images, labels and the padding mask."""
  check_labels(local["label"], local["mask"], num_classes, where)
  return {
    key: jax.make_array_from_process_local_data(batch_sharding, np.asarray(local[key]))
    for key in ("image", "label", "mask")
  }


def global_from_host(array: np.ndarray, batch_sharding) -> jax.Array:
  """A host array that every process holds whole -> a global array split by batch."""
  return jax.make_array_from_callback(array.shape, batch_sharding, lambda index: array[index])


def array_batches(arrays: dict[str, np.ndarray], batch_size: int, batch_sharding) -> Iterator[dict]:
  """One padded pass over whole host arrays (every host holds all rows), as
  global batches with a "mask" (0 = padding), like the eval pipeline."""
  count = len(next(iter(arrays.values())))
  for start in range(0, count, batch_size):
    rows = np.arange(start, start + batch_size)
    valid = rows < count
    rows = np.where(valid, rows, 0)
    batch = {key: value[rows] for key, value in arrays.items()}
    batch["mask"] = valid.astype(np.float32)
    yield {key: global_from_host(value, batch_sharding) for key, value in batch.items()}


def epoch_batches(
  arrays: dict[str, np.ndarray], batch_size: int, batch_sharding, *, seed: int, start_step: int
) -> Iterator[dict]:
  """Endless shuffled batches of whole host arrays (cached features).

  Epoch e is a permutation drawn from (seed, e), the remainder dropped, so
  batch k is the same after a restart: `start_step` replays from there.
  """
  count = len(next(iter(arrays.values())))
  per_epoch = count // batch_size
  step = start_step
  while True:
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(count)
    rows = order[index * batch_size : (index + 1) * batch_size]
    yield {key: global_from_host(value[rows], batch_sharding) for key, value in arrays.items()}
    step += 1


# ---------------------------------------------------------------- metrics --


def accuracy_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
  """Summed (not averaged) correct counts and loss, so padded batches combine exactly."""
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = top == labels[:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
    "correct1": jnp.sum(hits[:, 0] * mask),
    "correct5": jnp.sum(hits.any(-1) * mask),
    "loss_sum": jnp.sum(loss * mask),
    "count": jnp.sum(mask),
  }


def accuracy_metrics(sums: dict, num_classes: int, prefix: str = "eval_") -> dict:
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  metrics = {
    f"{prefix}top1": 100.0 * float(sums["correct1"]) / count,
    f"{prefix}loss": float(sums["loss_sum"]) / count,
  }
  if num_classes > 5:
    metrics[f"{prefix}top5"] = 100.0 * float(sums["correct5"]) / count
  return metrics


def evaluate(
  eval_step: Callable, state: Any, batches: Iterator[dict], num_classes: int, max_batches: int = -1
) -> dict:
  """Top-1 / top-5 (percent) and loss over one pass of `batches`."""
  totals = None
  for index, batch in enumerate(batches):
    if 0 <= max_batches <= index:
      break
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return accuracy_metrics(totals, num_classes)


# ---------------------------------------------------------------- features --


def extract_features(
  features_fn: Callable, params: Any, batches: Iterator[dict], mesh, max_batches: int = -1
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], labels [N]) of the real (mask 1) examples of `batches`,
  on every host. `features_fn(params, images)` runs jitted on the mesh."""
  step = _feature_step(features_fn, mesh)
  features, labels = [], []
  for index, batch in enumerate(batches):
    if 0 <= max_batches <= index:
      break
    out, label, mask = jax.device_get(step(params, batch))
    keep = np.asarray(mask) > 0
    features.append(np.asarray(out)[keep])
    labels.append(np.asarray(label)[keep])
  return np.concatenate(features), np.concatenate(labels)


@functools.lru_cache(maxsize=8)
def _feature_step(features_fn: Callable, mesh):
  """Jitted once per features_fn: the k-NN monitor extracts features again
  every `knn_every_steps` during pretraining, and would recompile each time."""
  # Replicated outputs: every host gets every row, in order.
  return jax.jit(
    lambda p, batch: (features_fn(p, batch["image"]), batch["label"], batch["mask"]),
    out_shardings=sharding.replicated(mesh),
  )


def split_batches(
  config, split: str, batch_size: int, batch_sharding, num_classes: int
) -> Iterator[dict]:
  """One padded pass over `split` with the eval transform, as labelled global batches."""
  local = input_pipeline.make_iterator(
    config.data, split=split, global_batch_size=batch_size, train=False, seed=config.seed
  )
  for batch in local:
    yield labelled_batch(batch, batch_sharding, num_classes, f"data split {split!r}")


# ---------------------------------------------------------------- workdir --


def experiment_identity(config, plan) -> dict:
  """What a resumed evaluation run must share with the run that wrote the workdir."""
  arch = {name: config.model[name] for name in checkpointing.ARCHITECTURE_FIELDS}
  return {
    "job": config.job,
    "model": arch,
    "data_source": config.data.source,
    "data_name": config.data.name,
    "seed": config.seed,
    "global_batch_size": config.global_batch_size,
    "baseline": config.baseline,
    "init_from": plan.init.describe() if plan.init else None,
    "num_classes": plan.num_classes,
  }


def job_metadata(config, plan) -> dict:
  return {
    "model": checkpointing.model_metadata(plan.model),
    "param_layout": "layers" if plan.model.scan_layers else "layer_i",
    "experiment": experiment_identity(config, plan),
    "source": f"mae_jax {PROTOCOLS[config.job]}",
    "config": json.loads(config.to_json_best_effort()),
  }


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, "checkpoints")


@dataclasses.dataclass(frozen=True)
class JobSetup:
  """What every training evaluation job (probe, fine-tuning) starts from."""

  plan: Any
  mesh: Any
  is_main: bool
  mngr: Any  # the workdir's CheckpointManager
  resume_step: int | None
  metadata: dict
  batch_sharding: Any
  replicated: Any
  schedule: Any  # warm-up + cosine at lr = base_lr x batch / 256


def start_job(config, workdir: str) -> JobSetup:
  """Validates the config (before any compile), builds the mesh, opens the
  workdir's checkpoints and the learning-rate schedule."""
  plan = make_eval_plan(config, num_devices=jax.device_count(), process_count=jax.process_count())
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, plan.mesh_shape)))
  is_main = jax.process_index() == 0
  mngr, resume_step, metadata = open_workdir(config, plan, workdir, mesh, is_main)
  opt = config.optimizer
  schedule = optim.learning_rate_schedule(
    peak_lr=optim.peak_learning_rate(opt.base_lr, config.global_batch_size),
    warmup_steps=plan.warmup_steps,
    total_steps=plan.total_steps,
    min_lr=opt.min_lr,
  )
  return JobSetup(
    plan=plan,
    mesh=mesh,
    is_main=is_main,
    mngr=mngr,
    resume_step=resume_step,
    metadata=metadata,
    batch_sharding=sharding.batch_sharding(mesh, plan.rules),
    replicated=sharding.replicated(mesh),
    schedule=schedule,
  )


def open_workdir(config, plan, workdir: str, mesh, is_main: bool):
  """(manager, resume step or None, metadata) for the run's own checkpoints.

  A workdir of another experiment is refused before anything is touched.
  """
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  directory = checkpoint_dir(workdir)
  metadata = job_metadata(config, plan)
  mngr = checkpointing.manager(
    directory,
    max_to_keep=config.keep_checkpoints,
    keep_period=config.keep_every_steps,
    enable_async=config.async_checkpointing,
  )
  resume_step = mngr.latest_step()
  if resume_step is not None:
    check_same_experiment(directory, mngr, resume_step, metadata)
  write_run_info(workdir, config, plan, mesh, resume_step, enabled=is_main)
  return mngr, resume_step, metadata


def write_results(
  workdir: str, config, plan, metrics: dict, *, step: int, is_main: bool, extra: dict | None = None
) -> dict:
  """results.json: the final accuracies (percent), where they came from, the config."""
  results = {
    "protocol": PROTOCOLS[config.job],
    "top1": metrics["eval_top1"],
    **({"top5": metrics["eval_top5"]} if "eval_top5" in metrics else {}),
    "num_classes": plan.num_classes,
    "eval_split": config.data.eval_split,
    "num_eval_examples": plan.num_eval_examples,
    "feature": "pixels" if config.baseline == "raw_pixels" else config.feature,
    "checkpoint": plan.init.describe() if plan.init else {"baseline": config.baseline},
    "step": step,
    **(extra or {}),
    "config": json.loads(config.to_json_best_effort()),
  }
  if is_main:
    epath.Path(workdir, "results.json").write_text(json.dumps(results, indent=2))
  return results


def print_summary(title: str, feature: str, results: dict, workdir: str, is_main: bool) -> None:
  if not is_main:
    return
  top5 = f", top-5 {results['top5']:.2f} %" if "top5" in results else ""
  origin = results["checkpoint"]
  origin = (
    f"{origin['path']} step {origin['step']}"
    if "path" in origin
    else f"baseline {origin['baseline']}"
  )
  print(
    f"\n{title} ({feature} features, {origin}): top-1 {results['top1']:.2f} %{top5} "
    f"on {results['num_eval_examples']} {results['eval_split']} images.\n"
    f"  results: {os.path.join(workdir, 'results.json')}\n"
    f"  metrics: {os.path.join(workdir, 'metrics.jsonl')}",
    flush=True,
  )
