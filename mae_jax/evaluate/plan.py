"""Checks an evaluation config and works out its shape, before anything compiles.

The evaluation twin of `mae_jax.core.plan`: same model, data and mesh
checks (reusing its helpers), plus the fields of the linear probe,
fine-tuning and k-NN jobs, the dataset's labels against the head's
classes, and the checkpoint `init_from` points at. Every mistake is a
`ValueError` naming the field, the value and what to do.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mae_jax.core import checkpointing, pretrained
from mae_jax.core import plan as plan_lib
from mae_jax.core.batches import InputSettings
from mae_jax.core.loop import LoopSettings
from mae_jax.core.workdir import checkpoint_metadata, experiment_identity
from mae_jax.data import dataset_info, validate_data_config
from mae_jax.errors import ConfigError

JOBS = ("linprobe", "finetune", "knn")
# What results.json and the checkpoints call each job's protocol.
PROTOCOLS = {"linprobe": "linear_probe", "finetune": "finetune", "knn": "knn"}
# "" = the checkpoint in init_from; the others are the honest-numbers baselines.
BASELINES = ("", "random_init", "raw_pixels")
FEATURES = ("cls", "pool")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalPlan(plan_lib.RunPlan):
  """The training plan (steps, warm-up, batch split, mesh; all 0 steps for
  k-NN, which trains nothing) plus what an evaluation job adds."""

  job: str
  eval_batch_size: int
  init: pretrained.InitCheckpoint | None  # None for the baselines


def _require(ok: bool, field: str, value, what: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r}: {what}.")


def check_job_fields(config: ml_collections.ConfigDict, *, reads_checkpoint: bool = True) -> None:
  """Every field of an evaluation job; `reads_checkpoint=False` (the AOT
  planner) does without an `init_from`."""
  job = config.job
  _require(job in JOBS, "job", job, f"evaluation jobs are {JOBS}")
  _require(config.baseline in BASELINES, "baseline", config.baseline, f"one of {BASELINES}")
  if config.baseline:
    _require(
      not config.init_from,
      "init_from",
      config.init_from,
      f"must be empty with config.baseline={config.baseline!r} (a baseline uses no checkpoint)",
    )
  elif reads_checkpoint:
    _require(
      bool(config.init_from),
      "init_from",
      config.init_from,
      "point it at a pretraining workdir or checkpoint, or set "
      "config.baseline='random_init' (or 'raw_pixels') for a baseline",
    )
  if job == "finetune":
    _require(
      config.baseline != "raw_pixels",
      "baseline",
      config.baseline,
      "fine-tuning trains the ViT; use 'random_init' for training from scratch",
    )
  _require(
    config.feature in FEATURES,
    "feature",
    config.feature,
    f"one of {FEATURES} (cls token, or global average pool of the patch tokens)",
  )
  _require(
    config.num_classes == -1 or config.num_classes > 0,
    "num_classes",
    config.num_classes,
    "-1 (from the dataset) or > 0",
  )
  _require(config.init_step >= -1, "init_step", config.init_step, "-1 (newest) or a step")
  plan_lib.positive_or_unset(
    config, "eval_batch_size", config.eval_batch_size, "the training micro-batch"
  )
  accum = config.grad_accum_steps
  if job == "finetune":
    _require(
      isinstance(accum, int) and not isinstance(accum, bool) and accum >= 1,
      "grad_accum_steps",
      accum,
      "an integer >= 1 (1 = no accumulation)",
    )
  else:
    # The probe's BatchNorm normalises over the whole batch, which
    # micro-batches would change, and k-NN trains nothing.
    _require(
      accum == 1,
      "grad_accum_steps",
      accum,
      f"gradient accumulation is for fine-tuning only, not {job!r}; leave it at 1",
    )
  if job == "knn":
    _require(config.knn_k >= 1, "knn_k", config.knn_k, "must be >= 1")
    _require(config.knn_temperature > 0, "knn_temperature", config.knn_temperature, "must be > 0")
    return
  plan_lib.check_run_fields(config)  # the batch, schedule, intervals: as pretraining
  _require(config.head_init_std > 0, "head_init_std", config.head_init_std, "> 0")
  opt = config.optimizer
  if job == "linprobe":
    _require(opt.name == "lars", "optimizer.name", opt.name, "the linear probe uses 'lars'")
    _require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "in [0, 1)")
    _require(opt.trust_coefficient > 0, "optimizer.trust_coefficient", opt.trust_coefficient, "> 0")
    if config.cache_features:
      d = config.data
      augmented = {
        name: d[name]
        for name in ("random_resized_crop", "horizontal_flip", "randaugment_ops", "random_erasing")
        if d[name]
      }
      _require(
        not augmented,
        "cache_features",
        True,
        f"caching needs a deterministic train transform, but data has {augmented}: "
        "turn those off or set config.cache_features=False",
      )
  if job == "finetune":
    _require(opt.name == "adamw", "optimizer.name", opt.name, "fine-tuning uses 'adamw'")
    for beta in ("b1", "b2"):
      _require(0 <= opt[beta] < 1, f"optimizer.{beta}", opt[beta], "in [0, 1)")
    _require(
      0 < opt.layer_decay <= 1,
      "optimizer.layer_decay",
      opt.layer_decay,
      "in (0, 1] (1 = no layer-wise decay)",
    )
    _require(config.mixup >= 0, "mixup", config.mixup, ">= 0 (0 = off)")
    _require(config.cutmix >= 0, "cutmix", config.cutmix, ">= 0 (0 = off)")
    _require(
      0 <= config.mixup_switch_prob <= 1, "mixup_switch_prob", config.mixup_switch_prob, "in [0, 1]"
    )
    _require(
      0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing, "in [0, 1)"
    )


def make_eval_plan(
  config: ml_collections.ConfigDict,
  *,
  num_devices: int,
  process_count: int,
  known_dataset: tuple[dict[str, int], int | None] | None = None,
) -> EvalPlan:
  """Checks an evaluation config; the run's numbers. `known_dataset` as in
  `plan.make_plan` (the AOT planner): the data and `init_from` are not read,
  and `init` is None."""
  check_job_fields(config, reads_checkpoint=known_dataset is None)
  model = plan_lib.model_config_from(config)
  data = config.data
  plan_lib.check_data_fits_model(data, model)
  if known_dataset is None:
    validate_data_config(data)
  mesh_shape, rules, data_parallel = plan_lib.mesh_plan(config, num_devices)
  # By default the eval batch is the micro-batch, which the train step
  # already fits in memory (as pretraining's evaluation).
  micro = config.global_batch_size // max(config.grad_accum_steps, 1)
  if config.job != "knn":
    micro = plan_lib.check_batch_split(
      config, "global_batch_size", mesh_shape, data_parallel, process_count, accum=True
    )
  if config.eval_batch_size <= 0:
    config = config.copy_and_resolve_references()
    config.eval_batch_size = micro
  eval_batch = plan_lib.check_batch_split(
    config, "eval_batch_size", mesh_shape, data_parallel, process_count
  )

  splits, dataset_classes = known_dataset or dataset_info(data)
  if dataset_classes is None:
    raise ConfigError(
      f"config.data ({data.source}:{data.name or ''}) has no class labels: "
      "evaluation needs a dataset with a ClassLabel 'label' feature."
    )
  num_classes = config.num_classes if config.num_classes > 0 else dataset_classes
  _require(
    num_classes >= dataset_classes,
    "num_classes",
    config.num_classes,
    f"the dataset has labels 0..{dataset_classes - 1}, outside a head of "
    f"{num_classes} classes: use num_classes >= {dataset_classes} (or -1)",
  )
  num_train, num_eval = splits[data.train_split], splits[data.eval_split]
  steps_per_epoch = total = warmup = 0
  if config.job != "knn":  # k-NN trains nothing
    steps_per_epoch, total, warmup = plan_lib.step_counts(config, num_train)

  init = None
  if not config.baseline and known_dataset is None:
    init = pretrained.locate(config.init_from, None if config.init_step < 0 else config.init_step)
    pretrained.check_encoder_architecture(init, model)
  return EvalPlan(
    job=config.job,
    model=model,
    mesh_shape=mesh_shape,
    rules=rules,
    data_parallel=data_parallel,
    num_classes=num_classes,
    eval_batch_size=eval_batch,
    steps_per_epoch=steps_per_epoch,
    total_steps=total,
    warmup_steps=warmup,
    num_train_examples=num_train,
    num_eval_examples=num_eval,
    init=init,
    micro_batch_size=micro,
    global_batch_size=config.global_batch_size,
    inputs=InputSettings.from_config(config),
    knn=plan_lib.KnnSettings.from_config(config, config.feature),
    # Evaluation jobs count examples (cached features are not images) and
    # keep one step in flight: XLA:CPU's in-process collectives (fake
    # devices) can jam under a long queue of tiny probe steps.
    loop=LoopSettings.from_config(
      config, total, throughput_key="examples_per_sec", one_step_in_flight=True
    ),
    checkpoints=checkpointing.CheckpointSettings.from_config(config),
    metadata=checkpoint_metadata(
      config,
      model,
      experiment_identity(
        config,
        job=config.job,
        baseline=config.baseline,
        init_from=init.describe() if init else None,
        num_classes=num_classes,
      ),
      source=f"mae_jax {PROTOCOLS[config.job]}",
    ),
  )
