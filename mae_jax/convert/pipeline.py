"""Whole conversions: weight file <-> mae_jax params <-> orbax checkpoint.

Import:  file -> {name: array} -> authors' layout -> params -> checkpoint
Export:  checkpoint -> params -> authors' layout -> .pth / .safetensors, or
         -> transformers' names -> a from_pretrained directory
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import storage
from mae_jax.convert import classifiers, licences, transformers_dir
from mae_jax.convert.authors import authors_from_params, params_from_authors
from mae_jax.convert.files import load_state_dict, save_state_dict
from mae_jax.convert.layouts import detect_layout, to_authors_layout
from mae_jax.core import checkpointing
from mae_jax.errors import CheckpointError, UsageError
from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.model.stacking import stack_layers, unstack_layers

LAYER_I, LAYERS = "layer_i", "layers"  # checkpoint metadata "param_layout"


def params_from_state_dict(
  state: Mapping[str, np.ndarray], config: ModelConfig, *, allow_unused: bool = False
) -> dict:
  """A state dict in any known layout -> unscanned mae_jax params (numpy)."""
  renamed = to_authors_layout(state, detect_layout(state))
  return params_from_authors(
    renamed.state, config, allow_unused=allow_unused, file_key=renamed.file_key
  )


def load_params(path: str, config: ModelConfig, *, allow_unused: bool = False) -> dict:
  """A `.pth` / `.safetensors` file (authors' or transformers' layout) -> params."""
  return params_from_state_dict(load_state_dict(path), config, allow_unused=allow_unused)


def save_params(params: Mapping, config: ModelConfig, path: str) -> None:
  """mae_jax params (either layer layout) -> the authors' layout, as `.pth` or `.safetensors`."""
  save_state_dict(authors_from_params(params, config), path)


class Imported(NamedTuple):
  path: str  # the checkpoint step directory written
  layout: str  # the layout detected in the input file


def import_to_checkpoint(
  input_path: str,
  output_dir: str,
  config: ModelConfig,
  *,
  scan_layers: bool = False,
  allow_unused: bool = False,
) -> Imported:
  """Converts a weight file into an orbax checkpoint (step 0)."""
  state = load_state_dict(input_path)
  layout = detect_layout(state)
  params = params_from_state_dict(state, config, allow_unused=allow_unused)
  param_layout = LAYER_I
  if scan_layers:
    params = stack_layers(params)
    param_layout = LAYERS
  # The metadata must describe the layout the params are stored in.
  config = config.replace(scan_layers=scan_layers)
  path = checkpointing.write_params(
    output_dir,
    params,
    config,
    source=f"{layout} state dict {storage.absolute(input_path)}",
    param_layout=param_layout,
    licence=licences.IMPORT_LICENCES[layout],
  )
  return Imported(path, layout)


def abstract_params(config: ModelConfig) -> dict:
  """Shapes and dtypes of the full model's params, without allocating them."""
  model = MaskedAutoencoder(config)
  images = jnp.zeros((1, *config.image_hw, config.channels))
  variables = jax.eval_shape(
    lambda: model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, images)
  )
  return nn.unbox(variables["params"])


def read_checkpoint_params(directory: str) -> tuple[dict, ModelConfig]:
  """Params (unscanned, numpy) and config of a checkpoint; encoder-only allowed."""
  config = checkpointing.config_from_metadata(checkpointing.read_metadata(directory))
  wanted = abstract_params(config)
  restored = checkpointing.restore_state(directory, {"params": wanted})["params"]
  for part in ("encoder", "decoder"):
    missing, total = _count_unrestored(restored[part])
    if part == "decoder" and missing == total:  # an encoder-only checkpoint
      restored = {"encoder": restored["encoder"]}
    elif missing:
      raise CheckpointError(
        f"the checkpoint in {directory!r} lacks {missing} of the {total} {part} "
        "parameters its metadata describes."
      )
  return unstack_layers(jax.tree.map(np.asarray, restored)), config


def _count_unrestored(tree) -> tuple[int, int]:
  """(leaves the checkpoint lacked, all leaves) after a partial restore.

  A partial restore hands back the abstract leaf for what the checkpoint
  lacks, e.g. the decoder of one converted from mae_pretrain_vit_*.pth.
  """
  leaves = jax.tree.leaves(tree)
  return sum(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves), len(leaves)


EXPORT_LAYOUTS = ("authors", "transformers")


class Exported(NamedTuple):
  config: ModelConfig
  what: str  # what was written, for the command's message


def export_checkpoint(directory: str, output_path: str, layout: str = "authors") -> Exported:
  """Writes a checkpoint's weights. A pretraining (or converted) checkpoint:
  a file in the authors' models_mae.py layout, or a transformers model
  directory (`transformers_dir`). A fine-tuning or probe checkpoint: a
  file in the authors' models_vit.py layout (`classifiers`)."""
  if classifiers.is_classifier(directory):
    if layout != "authors":
      raise UsageError(
        "transformers' ViTMAE has no classifier head: export a fine-tuned or probed "
        "classifier with --layout=authors (models_vit.py, timm's VisionTransformer names)."
      )
    state, config, what = classifiers.classifier_state(directory)
    save_state_dict(state, output_path)
    return Exported(config, f"{what}, models_vit.py layout")
  params, config = read_checkpoint_params(directory)
  if layout == "authors":
    save_params(params, config, output_path)
    return Exported(config, "authors' models_mae.py layout")
  mngr = checkpointing.manager(directory, read_only=True)
  step = mngr.latest_step()
  architecture = transformers_dir.write_directory(
    params,
    config,
    output_path,
    metadata=checkpointing.read_metadata(directory, step),
    checkpoint_dir=directory,
    step=step,
  )
  return Exported(config, f"a transformers {architecture} directory")
