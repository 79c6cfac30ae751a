"""What `config.init_from` names: one resolver and one layout rule for every job.

Pretraining (`init_from`: start from another run's or a converted model's
parameters), the linear probe and fine-tuning all go through here.

`config.init_from` may name
  - a pretraining workdir (its `checkpoints/` is used),
  - an orbax checkpoints directory (a run's `checkpoints/`, or the output of
    `python -m mae_jax.convert`, possibly encoder-only and/or with scanned
    `layers`),
  - one step directory inside either (`.../checkpoints/440`).
The newest complete step is used unless a step is named. Orbax writes a step
as `STEP.orbax-checkpoint-tmp-*` and renames it when complete, so such
directories are half-written steps and never used.

Only the parameter groups a job needs are restored (a partial orbax
restore, e.g. of `{"params": {"encoder": ...}}`), directly onto this run's
shardings, so a checkpoint from any mesh restores on any other. One rule
for the layout: a checkpoint stored per layer (`layer_i`) or scanned
(`layers`) is restored as stored and converted to this run's
`scan_layers`, never refused.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from etils import epath

from mae_jax import storage
from mae_jax.core import checkpointing
from mae_jax.core.state import create_state, state_specs, with_shardings
from mae_jax.errors import CheckpointError
from mae_jax.image_size import image_hw
from mae_jax.model import pos_embed
from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.model.stacking import stack_layers, unstack_layers

TMP_MARKER = ".orbax-checkpoint-tmp"
ENCODER_FIELDS = ("patch_size", "channels", "width", "depth", "heads", "mlp_ratio")
_EXPECTED = (
  "expected a pretraining workdir (with checkpoints/), an orbax checkpoints "
  "directory, or the output of `python -m mae_jax.convert`"
)


@dataclasses.dataclass(frozen=True)
class InitCheckpoint:
  directory: str  # the orbax CheckpointManager directory
  step: int
  metadata: dict

  @property
  def scanned(self) -> bool:
    return self.metadata.get("param_layout") == "layers"

  def describe(self) -> dict:
    return {"path": self.directory, "step": self.step, "source": self.metadata.get("source", "?")}


def locate(init_from: str, step: int | None = None) -> InitCheckpoint:
  """Resolves `init_from` to one complete step; ValueError naming the path otherwise."""
  path = init_from.rstrip("/")
  if path:
    path = storage.absolute(path)  # recorded in the metadata: the same from any cwd
  if not path or not storage.exists(path):
    raise CheckpointError(f"config.init_from={init_from!r}: nothing there; {_EXPECTED}.")
  if not epath.Path(path).is_dir():
    convert = (
      " (a PyTorch file: convert it first, `python -m mae_jax.convert --input FILE --output DIR`)"
      if path.endswith((".pth", ".pt", ".bin", ".safetensors", ".npz"))
      else ""
    )
    raise CheckpointError(f"config.init_from={init_from!r} is a file{convert}; {_EXPECTED}.")
  if epath.Path(path, "checkpoints").is_dir():
    path = storage.join(path, "checkpoints")
  elif re.fullmatch(r"\d+", storage.basename(path)) and step is None:
    path, step = storage.parent(path), int(storage.basename(path))
  entries = [entry.name for entry in epath.Path(path).iterdir()]
  half_written = sorted(name for name in entries if TMP_MARKER in name)
  try:
    complete = sorted(checkpointing.manager(path, read_only=True).all_steps())
  except Exception as error:  # orbax raises assorted types for foreign directories
    raise CheckpointError(
      f"config.init_from={init_from!r}: {path!r} is not an orbax "
      f"checkpoint directory ({error}); {_EXPECTED}."
    ) from error
  if step is not None and step not in complete:
    if any(name.startswith(f"{step}{TMP_MARKER}") for name in half_written):
      raise CheckpointError(
        f"config.init_from={init_from!r}: step {step} in {path!r} is half-written "
        f"({TMP_MARKER}*: its run stopped while saving it). Complete steps: {complete}."
      )
    raise CheckpointError(
      f"config.init_from={init_from!r}: no step {step} in {path!r}; complete steps: {complete}."
    )
  if not complete:
    if half_written:
      raise CheckpointError(
        f"config.init_from={init_from!r}: {path!r} holds only half-written steps "
        f"{half_written} (the run stopped while saving); {_EXPECTED}, with a complete step."
      )
    raise CheckpointError(
      f"config.init_from={init_from!r}: no checkpoint steps in {path!r}; {_EXPECTED}."
    )
  step = complete[-1] if step is None else step
  try:
    metadata = checkpointing.read_metadata(path, step)
  except Exception as error:
    raise CheckpointError(
      f"config.init_from={init_from!r}: step {step} in {path!r} has no "
      f"readable mae_jax metadata ({error}); {_EXPECTED}."
    ) from error
  if "model" not in metadata:
    raise CheckpointError(
      f"config.init_from={init_from!r}: the metadata of step {step} in "
      f"{path!r} does not describe a model; {_EXPECTED}."
    )
  return InitCheckpoint(directory=path, step=step, metadata=metadata)


def check_encoder_architecture(checkpoint: InitCheckpoint, config: ModelConfig) -> None:
  """The encoder sizes must match; the decoder (unused here) may differ."""
  saved = checkpoint.metadata["model"]
  same_decoder = config.replace(
    **{
      name: saved[name]
      for name in checkpointing.ARCHITECTURE_FIELDS
      if name not in ENCODER_FIELDS and name in saved
    }
  )
  checkpointing.check_architecture(checkpoint.directory, checkpoint.metadata, same_decoder)


def param_specs(module: nn.Module, mesh, rules) -> tuple[Any, Any]:
  """(shardings, abstract) of a module's parameters, without allocating them."""
  shardings, abstract = state_specs(module, optax.identity(), mesh, rules)
  return shardings.params, abstract.params


def random_params(module: nn.Module, key: jax.Array, shardings: Any) -> Any:
  """The module's own initialisation, created directly on `shardings`."""
  return jax.jit(
    lambda k: create_state(module, optax.identity(), k).params, out_shardings=shardings
  )(key)


def restore_encoder(
  checkpoint: InitCheckpoint, make_module, config: ModelConfig, mesh, rules
) -> Any:
  """The checkpoint's encoder parameters, laid out as `make_module(config)` wants them.

  Args:
    make_module: config -> a module whose parameters are the encoder's
      (`Encoder`, possibly with `final_norm=False`).
  """
  check_encoder_architecture(checkpoint, config)
  run_shardings, _ = param_specs(make_module(config), mesh, rules)
  # Restore in the layout the checkpoint stores (scanned or not), on shardings
  # derived from that layout, then convert to this run's layout if it differs.
  stored_config = config.replace(scan_layers=checkpoint.scanned)
  stored_shardings, stored_abstract = param_specs(make_module(stored_config), mesh, rules)
  # A learned position table is set apart: its size follows the resolution.
  learned_pos = stored_abstract.pop("pos_embed", None) is not None
  stored_shardings.pop("pos_embed", None)
  wanted = {"encoder": with_shardings(stored_abstract, stored_shardings)}
  restored = _restore(checkpoint, wanted, "encoder")["encoder"]
  if checkpoint.scanned != config.scan_layers:
    convert = stack_layers if config.scan_layers else unstack_layers
    run_trunk = {name: s for name, s in run_shardings.items() if name != "pos_embed"}
    restored = jax.jit(convert, out_shardings=run_trunk)(restored)
  if learned_pos:
    saved = checkpoint.metadata["model"]
    saved_grid = tuple(n // saved["patch_size"] for n in image_hw(saved["image_size"]))
    table = pos_embed.interpolate_pos_embed(
      checkpoint_pos_table(checkpoint, mesh), config.grid_hw, old_grid=saved_grid
    )
    dtype = jax.numpy.dtype(config.param_dtype)
    restored["pos_embed"] = jax.device_put(table.astype(dtype), run_shardings["pos_embed"])
  return restored


def checkpoint_pos_table(checkpoint: InitCheckpoint, mesh) -> np.ndarray:
  """The encoder's (1, 1 + L, D) position table at the checkpoint's own grid:
  its learned `pos_embed` when it stores one (a fine-tuned model), else the
  fixed sin-cos table pretraining used (which pretraining checkpoints and
  converted ones do not store, as the authors' `pos_embed` buffer)."""
  saved = checkpoint.metadata["model"]
  encoder = checkpointing.saved_params_metadata(checkpoint.directory, checkpoint.step)["encoder"]
  if "pos_embed" not in encoder:
    rows, cols = (n // saved["patch_size"] for n in image_hw(saved["image_size"]))
    return pos_embed.sincos_2d(saved["width"], (rows, cols))[None]
  stored = encoder["pos_embed"]
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract = jax.ShapeDtypeStruct(stored.shape, stored.dtype, sharding=replicated)
  wanted = {"encoder": {"pos_embed": abstract}}
  table = _restore(checkpoint, wanted, "position-embedding")["encoder"]["pos_embed"]
  return np.asarray(jax.device_get(table), np.float32)


def restore_pretraining_params(
  checkpoint: InitCheckpoint, config: ModelConfig, mesh, rules
) -> dict:
  """{group: params} of the MAE groups the checkpoint holds ("encoder", and
  "decoder" unless it is encoder-only), in this run's layout and shardings."""
  checkpointing.check_architecture(checkpoint.directory, checkpoint.metadata, config)
  run_shardings, _ = param_specs(MaskedAutoencoder(config), mesh, rules)
  stored = MaskedAutoencoder(config.replace(scan_layers=checkpoint.scanned))
  stored_shardings, stored_abstract = param_specs(stored, mesh, rules)
  groups = checkpointing.saved_param_groups(checkpoint.directory, checkpoint.step) & set(
    stored_abstract
  )
  wanted = {g: with_shardings(stored_abstract[g], stored_shardings[g]) for g in sorted(groups)}
  restored = _restore(checkpoint, wanted, "MAE")
  if checkpoint.scanned != config.scan_layers:
    convert = stack_layers if config.scan_layers else unstack_layers
    restored = jax.jit(convert, out_shardings={g: run_shardings[g] for g in restored})(restored)
  return restored


def _restore(checkpoint: InitCheckpoint, wanted: dict, what: str) -> dict:
  """A partial restore of `{"params": wanted}`; CheckpointError naming what is missing."""
  try:
    restored = checkpointing.restore_state(
      checkpoint.directory, {"params": wanted}, step=checkpoint.step
    )["params"]
  except (KeyError, ValueError) as error:
    raise CheckpointError(
      f"the checkpoint in {checkpoint.directory!r} (step {checkpoint.step}) "
      f"has no {what} parameters of the expected shapes: {error}"
    ) from error
  missing = [
    jax.tree_util.keystr(path)
    for path, leaf in jax.tree_util.tree_leaves_with_path(restored)
    if isinstance(leaf, jax.ShapeDtypeStruct)
  ]
  if missing:
    raise CheckpointError(
      f"the checkpoint in {checkpoint.directory!r} (step {checkpoint.step}) "
      f"lacks {what} parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}"
      f": expected an MAE with {ENCODER_FIELDS} as in the config."
    )
  return restored
