"""Checks a run's config and works out its shape, before anything compiles.

Every mistake a user can make in a config (an impossible size, a batch that
does not split over the devices, a mesh larger than the machine, a dataset
that is not there) is a `ValueError` raised here, naming the field, the
value and what to change — not a trace-time error minutes into a pod job.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from mae_jax.core import checkpointing, nonfinite, sharding
from mae_jax.core.batches import InputSettings
from mae_jax.core.loop import LoopSettings
from mae_jax.core.workdir import checkpoint_metadata, experiment_identity
from mae_jax.data import dataset_info, validate_data_config
from mae_jax.errors import ConfigError
from mae_jax.image_size import image_hw
from mae_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class KnnSettings:
  """The k-NN evaluator's settings (the pretraining monitor's and the k-NN job's)."""

  k: int
  temperature: float
  train_batches: int  # -1: the whole train split in the bank
  feature: str  # cls | pool

  @classmethod
  def from_config(cls, config, feature: str) -> "KnnSettings":
    return cls(config.knn_k, config.knn_temperature, config.knn_train_batches, feature)


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What every training job works out from its config before compiling
  (pretraining's plan; the evaluation jobs' `EvalPlan` extends it)."""

  model: ModelConfig
  mesh_shape: tuple[int, ...]
  rules: tuple
  data_parallel: int
  micro_batch_size: int  # global batch / gradient-accumulation steps
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  num_train_examples: int
  num_eval_examples: int
  num_classes: int | None = None  # None: the dataset has no class labels
  # Resolved here once and handed down, so the modules below the jobs take
  # these, not the config: the batch, the loop's settings, the checkpoint
  # manager's, and what every checkpoint records about the run.
  global_batch_size: int = 0
  inputs: InputSettings | None = None
  knn: KnnSettings | None = None
  loop: LoopSettings | None = None
  checkpoints: checkpointing.CheckpointSettings | None = None
  metadata: dict = dataclasses.field(default_factory=dict)

  def make_mesh(self, devices=None) -> Any:
    """The run's mesh, over `devices` (default: all of them)."""
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, self.mesh_shape)), devices=devices)


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
  fields = dict(config.model.to_dict())
  fields["attention_impl"] = fields.get("attention_impl") or None
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(f"config.model has unknown fields {unknown}; known: {sorted(known)}.")
  return ModelConfig(**fields).validate()


def _positive(config, name: str, value: Any, *, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{name}={value!r}: must be {bound}.")


def positive_or_unset(config, name: str, value: Any, unset: str) -> None:
  """A field whose -1 means "unset" (`unset` says what then happens): any
  other value must be > 0, so a typo such as -5 is refused, not read as -1."""
  if isinstance(value, bool) or not (value == -1 or value > 0):
    raise ConfigError(f"config.{name}={value!r}: must be > 0, or -1 ({unset}).")


def check_run_fields(config: ml_collections.ConfigDict) -> None:
  """The fields every training job shares (configs.common.base_training_config):
  the batch, the schedule's length and learning rates, the intervals, what
  a non-finite step does, the progress bar. Pretraining, the probe and
  fine-tuning all check them here."""
  _positive(config, "global_batch_size", config.global_batch_size)
  _positive(config, "grad_accum_steps", config.grad_accum_steps)
  positive_or_unset(config, "num_train_steps", config.num_train_steps, "num_epochs decides")
  if config.num_train_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError(
      f"config.num_epochs={config.num_epochs} and config.num_train_steps="
      f"{config.num_train_steps}: set one of them > 0."
    )
  _positive(config, "warmup_epochs", config.warmup_epochs, allow_zero=True)
  opt = config.optimizer
  _positive(config, "optimizer.base_lr", opt.base_lr)
  _positive(config, "optimizer.min_lr", opt.min_lr, allow_zero=True)
  _positive(config, "optimizer.weight_decay", opt.weight_decay, allow_zero=True)
  for name in ("checkpoint_every_steps", "keep_checkpoints", "log_every_steps", "eval_every_steps"):
    _positive(config, name, config[name])
  _positive(config, "keep_every_steps", config.keep_every_steps, allow_zero=True)
  check_nonfinite(config)
  if config.progress_bar not in ("auto", "on", "off"):
    raise ConfigError(f"config.progress_bar={config.progress_bar!r}: auto, on or off.")


def check_training_fields(config: ml_collections.ConfigDict) -> None:
  """Pretraining's fields: the shared ones, AdamW's, and its own."""
  check_run_fields(config)
  opt = config.optimizer
  if opt.name != "adamw":
    raise ConfigError(f"config.optimizer.name={opt.name!r}: pretraining supports 'adamw'.")
  _positive(config, "optimizer.grad_clip_norm", opt.grad_clip_norm, allow_zero=True)
  for beta in ("b1", "b2"):
    if not 0.0 <= opt[beta] < 1.0:
      raise ConfigError(f"config.optimizer.{beta}={opt[beta]!r}: must be in [0, 1).")
  _positive(config, "device_prefetch", config.device_prefetch, allow_zero=True)
  positive_or_unset(config, "eval_batches", config.eval_batches, "the whole held-out split")
  check_knn_monitor_fields(config)


def check_nonfinite(config: ml_collections.ConfigDict) -> None:
  """What a training job does on a non-finite step (mae_jax.core.nonfinite)."""
  if config.nonfinite not in nonfinite.MODES:
    raise ConfigError(f"config.nonfinite={config.nonfinite!r}: 'stop' or 'skip'.")


def check_knn_monitor_fields(config: ml_collections.ConfigDict) -> None:
  """The periodic k-NN monitor's settings (configs.common.knn_fields)."""
  every = config.knn_every_steps
  if every < 0:
    raise ConfigError(
      f"config.knn_every_steps={every!r}: must be >= 0 (0 = no k-NN "
      "monitor, N = a k-NN evaluation every N steps)."
    )
  if not every:
    return
  checks = (
    ("knn_k", config.knn_k >= 1, ">= 1"),
    ("knn_temperature", config.knn_temperature > 0, "> 0"),
    ("knn_feature", config.knn_feature in ("cls", "pool"), "'cls' or 'pool'"),
    (
      "knn_train_batches",
      config.knn_train_batches == -1 or config.knn_train_batches > 0,
      "-1 (the whole train split) or > 0",
    ),
  )
  for name, ok, what in checks:
    if not ok:
      raise ConfigError(
        f"config.{name}={config[name]!r}: must be {what} (the k-NN monitor "
        "is on); or set config.knn_every_steps=0."
      )


def check_data_fits_model(data: ml_collections.ConfigDict, model: ModelConfig) -> None:
  """The images the pipeline makes are the images the model expects."""
  agree = {
    "image_size": image_hw(data.image_size) == image_hw(model.image_size),  # 224 == (224, 224)
    "channels": data.channels == model.channels,
  }
  for field, same in agree.items():
    if not same:
      raise ConfigError(
        f"config.data.{field}={data[field]} but config.model.{field}={getattr(model, field)}: "
        "they must agree."
      )


def mesh_plan(
  config: ml_collections.ConfigDict, num_devices: int
) -> tuple[tuple[int, ...], Any, int]:
  """(mesh shape, logical-axis rules, data-parallel size: the product of the
  mesh axes the batch is split over) for `num_devices` devices; a ValueError
  for a mesh that does not fit them."""
  mesh_shape = sharding.mesh_shape(config.mesh.to_dict(), num_devices)
  rules = sharding.rules_from_config(config.logical_axis_rules)
  axes = sharding.batch_axes(rules)
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  data_parallel = math.prod(dict(zip(sharding.MESH_AXES, mesh_shape))[a] for a in axes)
  return mesh_shape, rules, data_parallel


def check_batch_split(
  config: ml_collections.ConfigDict,
  field: str,
  mesh_shape: tuple[int, ...],
  data_parallel: int,
  process_count: int,
  *,
  accum: bool = False,
) -> int:
  """The one batch-split rule of every job; the (micro-)batch size.

  `config[field]` is a global batch. Each host reads batch / hosts rows, and
  the batch is split over the `data_parallel` devices of the mesh's batch
  axes (which span the hosts), so it must divide by both. With `accum`, the
  batch is also cut into config.grad_accum_steps micro-batches, each spread
  over all those devices (strided rows, see mae_jax.core.accumulate), so
  every micro-batch must split as a whole batch would.
  """
  batch, steps = config[field], config.grad_accum_steps if accum else 1
  if batch % steps:
    raise ConfigError(
      f"config.{field}={batch} is not divisible by config.grad_accum_steps={steps}."
    )
  micro = batch // steps
  if micro % data_parallel:
    what = (
      f"config.{field}={batch} / config.grad_accum_steps={steps} = {micro} images per "
      "micro-batch do not"
      if steps > 1
      else f"config.{field}={batch} does not"
    )
    raise ConfigError(
      f"{what} split over the {data_parallel} data-parallel devices (mesh {dict(zip(sharding.MESH_AXES, mesh_shape))}): make it a multiple "
      f"of {data_parallel * steps}."
    )
  if batch % process_count:
    raise ConfigError(f"config.{field}={batch} does not split over {process_count} hosts.")
  return micro


def step_counts(config: ml_collections.ConfigDict, num_train: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, warm-up steps) of a training job: epochs
  of whole global batches (the remainder of an epoch is dropped), total from
  num_train_steps or num_epochs, warm-up from warmup_epochs, at most total."""
  batch, data = config.global_batch_size, config.data
  steps_per_epoch = num_train // batch
  if steps_per_epoch == 0:
    raise ConfigError(
      f"config.global_batch_size={batch} is larger than the {num_train} training "
      f"images of {data.source}:{data.name or ''}{data.train_split}."
    )
  total = (
    config.num_train_steps
    if config.num_train_steps > 0
    else int(round(config.num_epochs * steps_per_epoch))
  )
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  return steps_per_epoch, total, min(warmup, total)


def make_plan(
  config: ml_collections.ConfigDict,
  *,
  num_devices: int,
  process_count: int,
  known_dataset: tuple[dict[str, int], int | None] | None = None,
) -> RunPlan:
  """Checks the config against the devices and the dataset; the run's numbers.

  `known_dataset`: ({split: size}, num_classes) for a planner that cannot
  read the data (the AOT pod planner); by default the dataset is opened
  and checked.
  """
  model = model_config_from(config)
  check_training_fields(config)
  data = config.data
  check_data_fits_model(data, model)
  if known_dataset is None:
    validate_data_config(data)
  mesh_shape, rules, data_parallel = mesh_plan(config, num_devices)
  micro = check_batch_split(
    config, "global_batch_size", mesh_shape, data_parallel, process_count, accum=True
  )
  splits, num_classes = known_dataset or dataset_info(data)
  if config.knn_every_steps > 0 and num_classes is None:
    raise ConfigError(
      f"config.knn_every_steps={config.knn_every_steps} but config.data "
      f"({data.source}:{data.name or ''}) has no class labels, which the k-NN monitor "
      "needs: set config.knn_every_steps=0, or pretrain on a dataset with a ClassLabel "
      "'label' feature."
    )
  num_train, num_eval = splits[data.train_split], splits[data.eval_split]
  steps_per_epoch, total, warmup = step_counts(config, num_train)
  return RunPlan(
    model=model,
    mesh_shape=mesh_shape,
    rules=rules,
    data_parallel=data_parallel,
    micro_batch_size=micro,
    steps_per_epoch=steps_per_epoch,
    total_steps=total,
    warmup_steps=warmup,
    num_train_examples=num_train,
    num_eval_examples=num_eval,
    num_classes=num_classes,
    global_batch_size=config.global_batch_size,
    inputs=InputSettings.from_config(config),
    knn=KnnSettings.from_config(config, config.knn_feature),
    loop=LoopSettings.from_config(config, total),
    checkpoints=checkpointing.CheckpointSettings.from_config(config),
    metadata=checkpoint_metadata(
      config, model, experiment_identity(config), source="mae_jax pretraining"
    ),
  )
