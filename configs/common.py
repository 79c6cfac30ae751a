"""Pieces shared by the config files: option parsing and model fields.

Config files are `get_config(arg)` modules used as
`--config=configs/FILE.py:PRESET,option,key=value`. The text after the colon
is a comma-separated list: the first item names a preset, the others are
flags (`runlocal`) or `key=value` options that the file documents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from mae_jax.model.config import ModelConfig, preset


def parse_arg(
  arg: str | None, *, default_preset: str, presets: tuple[str, ...], known_options: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
  """'vit_base,runlocal,epochs=1600' -> ('vit_base', {'runlocal': True, 'epochs': 1600})."""
  items = [item.strip() for item in (arg or "").split(",") if item.strip()]
  name = default_preset
  if items and "=" not in items[0] and items[0] not in known_options:
    name = items.pop(0)
  if name not in presets:
    raise ValueError(f"config preset {name!r} is unknown: choose one of {list(presets)}.")
  options = dict(known_options)
  for item in items:
    key, _, value = item.partition("=")
    if key not in known_options:
      raise ValueError(
        f"config option {key!r} is unknown: known options are {sorted(known_options)}."
      )
    default = known_options[key]
    if not value:
      options[key] = True
    elif isinstance(default, bool):
      options[key] = value.lower() in ("1", "true", "yes")
    else:
      options[key] = type(default)(value)
  return name, options


def model_config_dict(model_preset: str, **overrides: Any) -> ml_collections.ConfigDict:
  """All `ModelConfig` fields of a preset (or a custom size) as a ConfigDict."""
  if model_preset == "custom":
    config = ModelConfig(**overrides).validate()
  else:
    config = preset(model_preset, **overrides)
  fields = dataclasses.asdict(config)
  # attention_impl may be None; give the ConfigDict a string type for CLI overrides.
  fields["attention_impl"] = fields["attention_impl"] or ""
  # An int (square) or (height, width): object-typed, so either overrides it.
  fields["image_size"] = ml_collections.config_dict.FieldReference(
    fields["image_size"], field_type=object
  )
  return ml_collections.ConfigDict(fields)


def base_training_config() -> ml_collections.ConfigDict:
  """Everything a run depends on besides the model and the data."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.global_batch_size = 4096
  c.grad_accum_steps = 1
  c.num_epochs = 800.0
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.warmup_epochs = 40.0
  c.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1.5e-4,
      min_lr=0.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.05,
      grad_clip_norm=0.0,
    )
  )  # 0 = no clipping (the reference clips nothing)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.logical_axis_rules = []  # empty = mae_jax.core.sharding.DEFAULT_RULES
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # newest checkpoints kept
  c.keep_every_steps = 0  # > 0: also keep every such step forever
  c.async_checkpointing = True
  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.eval_batches = -1  # -1 = the whole held-out split
  c.num_reconstructions = 8  # held-out images in reconstructions.png
  c.progress_bar = "auto"  # auto (only on a terminal) | on | off
  c.init_from = ""  # checkpoint dir to start from (fine-tuning chains)
  c.device_prefetch = 2  # batches transferred to the devices ahead of the step
  c.nonfinite = "stop"  # non-finite loss/gradient: "stop" the run, or "skip" the step
  # Persistent XLA compilation cache, so a restart (preemption, resume) reuses
  # the compiled step: "auto" = <workdir>/compilation_cache, a path (gs:// ok),
  # or "" (off). A JAX_COMPILATION_CACHE_DIR environment variable wins.
  c.compilation_cache = "auto"
  # Multi-process runs: seconds without a heartbeat from another process
  # before it is declared lost; the survivors then exit 75 (resumable), one
  # line naming it and the last complete checkpoint (mae_jax.cli.host_watch).
  c.host_timeout_seconds = 60.0
  knn_fields(c)
  return c


def knn_fields(config: ml_collections.ConfigDict) -> None:
  """The k-NN settings (mae_jax.evaluators.knn): the knn job, and the periodic
  monitor a pretraining run runs every `knn_every_steps` (0 = never) and at
  its last step, on the train split (bank) against the eval split; the
  dataset needs class labels. The knn job itself reads `config.feature`."""
  config.knn_k = 20
  config.knn_temperature = 0.07
  config.knn_feature = "cls"  # cls | pool, after the encoder's final norm
  config.knn_train_batches = -1  # train-split batches in the bank; -1 = all
  config.knn_every_steps = 0  # pretraining: > 0 logs knn_top1/top5 every N steps


# Fields only pretraining reads. Evaluation configs do not carry them, so an
# override of one (`--config.device_prefetch=4` on a probe) is refused as an
# unknown key instead of silently doing nothing.
PRETRAINING_ONLY = (
  "device_prefetch",
  "eval_batches",
  "num_reconstructions",
  "knn_every_steps",
  "knn_feature",
)


def base_eval_config(job: str) -> ml_collections.ConfigDict:
  """The fields of an evaluation job (linprobe | finetune | knn): the training
  fields it reads, and its own; the config files set the recipe values."""
  c = base_training_config()
  for name in PRETRAINING_ONLY:
    del c[name]
  c.job = job
  c.init_from = ""  # pretraining workdir, checkpoints dir or converted checkpoint
  c.init_step = -1  # -1 = the newest complete step of init_from
  c.baseline = ""  # "" | random_init | raw_pixels (then init_from stays empty)
  c.feature = "cls"  # cls | pool
  c.num_classes = -1  # -1 = the dataset's
  c.eval_batch_size = -1  # -1 = the micro-batch, global_batch_size / grad_accum_steps
  c.head_init_std = 0.01
  c.cache_features = False  # linprobe: features once, if the train transform is fixed
  c.mixup = 0.0  # finetune: Mixup alpha (0 = off)
  c.cutmix = 0.0  # finetune: CutMix alpha (0 = off)
  c.mixup_switch_prob = 0.5  # finetune: P(CutMix) when both are on
  c.label_smoothing = 0.0
  return c
