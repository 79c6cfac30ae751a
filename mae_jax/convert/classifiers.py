"""Fine-tuned and probed classifiers out, in the authors' models_vit.py layout.

The authors' fine-tuning and linear-probe code (models_vit.py) is timm's
`VisionTransformer`: `cls_token`, `pos_embed` (a parameter), `patch_embed.
proj`, `blocks.{i}` (named as in pretraining), then

  fine-tuning, global pool (the recipe)  `fc_norm` (no final `norm`), `head`
  fine-tuning, cls token                 `norm`, `head`
  linear probe (cls token)               `norm`, `head.0` (BatchNorm1d without
                                         affine: running_mean, running_var,
                                         num_batches_tracked), `head.1` (Linear)

A probe checkpoint holds only its head: the encoder is the one it probed,
restored from the checkpoint its run names (`init_from`) exactly as the
probe restored it (its position table resized to the probe's resolution).
"""

from __future__ import annotations

import jax
import numpy as np

from mae_jax.convert.authors import (
  TensorSpec,
  layer_norm_specs,
  linear_specs,
  state_from_specs,
  tensor_specs,
)
from mae_jax.core import checkpointing
from mae_jax.errors import CheckpointError, UsageError
from mae_jax.model.config import ModelConfig
from mae_jax.model.stacking import unstack_layers

JOBS = ("finetune", "linprobe")


def classifier_specs(
  config: ModelConfig, num_classes: int, *, pool: bool, probe: bool
) -> list[TensorSpec]:
  """Every tensor of the models_vit classifier, and where mae_jax keeps it."""
  width, tokens = config.width, config.num_patches + 1
  specs = [
    s for s in tensor_specs(config, with_decoder=False) if not (pool and s.key.startswith("norm."))
  ]
  specs.append(
    TensorSpec("pos_embed", (1, tokens, width), ("encoder", "pos_embed"), (1, tokens, width))
  )
  if pool:
    specs += layer_norm_specs("fc_norm", ("fc_norm",), width)
  if probe:
    specs += [
      TensorSpec("head.0.running_mean", (width,), ("head", "bn", "mean"), (width,)),
      TensorSpec("head.0.running_var", (width,), ("head", "bn", "var"), (width,)),
    ]
    specs += linear_specs("head.1", ("head", "linear"), (width,), (num_classes,))
  else:
    specs += linear_specs("head", ("head",), (width,), (num_classes,))
  return specs


def _restore_saved(directory: str, step: int, names: tuple[str, ...]) -> dict:
  """The `names` parts of a checkpoint's state, as saved (shapes read from it)."""
  saved = checkpointing.saved_state_metadata(directory, step)
  abstract = {
    name: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
      saved[name],
      is_leaf=lambda m: hasattr(m, "shape"),  # orbax's metadata entries are pytrees too
    )
    for name in names
  }
  return jax.tree.map(np.asarray, checkpointing.restore_state(directory, abstract, step))


def _probed_encoder(metadata: dict, config: ModelConfig) -> dict:
  """The encoder a probe ran on, restored as the probe restored it."""
  from mae_jax.core import pretrained, sharding
  from mae_jax.model.mae import Encoder

  # The evaluation encoder (models_vit.py's): its position table a parameter.
  evaluation_encoder = lambda cfg: Encoder(cfg, learned_pos_embed=True)  # noqa: E731

  init = (metadata.get("experiment") or {}).get("init_from")
  if not init:
    baseline = (metadata.get("config") or {}).get("baseline") or "?"
    raise UsageError(
      f"this probe ran on a baseline ({baseline!r}), not a pretrained encoder: there is "
      "no encoder to export with its head."
    )
  checkpoint = pretrained.locate(init["path"], init["step"])
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  encoder = pretrained.restore_encoder(
    checkpoint, evaluation_encoder, config.replace(scan_layers=False), mesh, sharding.DEFAULT_RULES
  )
  return jax.tree.map(np.asarray, encoder)


def classifier_state(directory: str) -> tuple[dict[str, np.ndarray], ModelConfig, str]:
  """(models_vit state dict, model config, a description) of a fine-tuning
  or probe checkpoint directory."""
  step = checkpointing.manager(directory, read_only=True).latest_step()
  metadata = checkpointing.read_metadata(directory, step)
  run_config = metadata.get("config") or {}
  job = run_config.get("job")
  if job not in JOBS:
    raise UsageError(f"{directory!r} is not a fine-tuning or probe checkpoint (job {job!r}).")
  config = checkpointing.config_from_metadata(metadata)
  num_classes = metadata["experiment"]["num_classes"]
  feature = run_config.get("feature", "cls")
  if job == "finetune":
    params = unstack_layers(_restore_saved(directory, step, ("params",))["params"])
    pool = feature == "pool"
    state = state_from_specs(params, classifier_specs(config, num_classes, pool=pool, probe=False))
    return state, config, f"fine-tuned classifier ({'global pool' if pool else 'cls token'})"
  if feature != "cls":
    raise UsageError(
      f"this probe read the {feature!r} feature (the patch tokens' mean after the final "
      "norm), which models_vit.py cannot express (its global pool normalises after the "
      "mean, with fc_norm): export a cls-token probe, or the encoder alone."
    )
  saved = _restore_saved(directory, step, ("params", "batch_stats"))
  head = {"linear": saved["params"]["head"]["linear"], "bn": saved["batch_stats"]["bn"]}
  params = {"encoder": _probed_encoder(metadata, config), "head": head}
  state = state_from_specs(params, classifier_specs(config, num_classes, pool=False, probe=True))
  # BatchNorm1d's counter (the probe's steps; torch reads it only when
  # momentum is None): an int64 scalar, as torch keeps it.
  state["head.0.num_batches_tracked"] = np.asarray(step, np.int64)
  return state, config, "linear probe (cls token, BatchNorm1d + Linear head)"


def is_classifier(directory: str) -> bool:
  try:
    metadata = checkpointing.read_metadata(directory)
  except CheckpointError:
    return False
  return (metadata.get("config") or {}).get("job") in JOBS
