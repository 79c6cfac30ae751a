"""Orbax checkpoints: one layout for pretraining, evaluation and converted weights.

A checkpoint directory is an orbax `CheckpointManager` directory: one
sub-directory per step, each with two items:

  state     PyTree: {"params": ..., "step": ..., and for a training run
            "opt_state": ..., "rng": ...}. Converted weights have only
            params and step.
  metadata  JSON: {"model": ModelConfig fields, "source": where it came from,
            "param_layout": "layers" (scanned) or "layer_i", ...}.

Parts of `state` (e.g. only the encoder) are restored with `PyTreeRestore`
and `partial_restore=True`, onto whatever shardings the abstract tree
carries, so a checkpoint written on one mesh restores on another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from absl import logging

from mae_jax import storage
from mae_jax.errors import CheckpointError
from mae_jax.model.config import ModelConfig

STATE = "state"
METADATA = "metadata"

# Fields that change the parameter shapes; the rest (dtype, remat, mask
# ratio, image size...) can differ between the writer and the reader.
ARCHITECTURE_FIELDS = (
  "patch_size",
  "channels",
  "width",
  "depth",
  "heads",
  "mlp_ratio",
  "decoder_width",
  "decoder_depth",
  "decoder_heads",
  "decoder_mlp_ratio",
  "encoder_mask_tokens",
)


def manager(
  directory: str,
  *,
  max_to_keep: int | None = None,
  keep_period: int | None = None,
  save_interval_steps: int = 1,
  enable_async: bool = True,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """`max_to_keep` newest checkpoints, plus every `keep_period`-th step forever."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep,
    keep_period=keep_period or None,
    save_interval_steps=save_interval_steps,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=enable_async,
  )
  return ocp.CheckpointManager(storage.absolute(directory), options=options)


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
  """How a training job keeps its own checkpoints (resolved in its plan)."""

  keep: int  # the newest checkpoints kept
  keep_every_steps: int  # > 0: also every such step, forever
  asynchronous: bool

  @classmethod
  def from_config(cls, config) -> "CheckpointSettings":
    return cls(config.keep_checkpoints, config.keep_every_steps, config.async_checkpointing)


def manager_for_run(directory: str, settings: CheckpointSettings) -> ocp.CheckpointManager:
  """The manager of a training job's own checkpoints."""
  return manager(
    directory,
    max_to_keep=settings.keep,
    keep_period=settings.keep_every_steps,
    enable_async=settings.asynchronous,
  )


class CheckpointSaveError(storage.WriteFailed):
  """Writing a checkpoint failed (disk full, permissions, quota...). The
  checkpoints saved before it are intact; the message says what to do."""


def save(
  mngr: ocp.CheckpointManager, step: int, state: Any, metadata: Mapping, *, force: bool = False
) -> bool:
  """Starts an (asynchronous) save of `step`. A failure of this save or of
  the previous one still in flight raises CheckpointSaveError."""
  try:
    return mngr.save(
      step,
      args=ocp.args.Composite(
        **{STATE: ocp.args.PyTreeSave(state), METADATA: ocp.args.JsonSave(dict(metadata))}
      ),
      force=force,
    )
  except Exception as error:
    raise save_failure(str(mngr.directory), error) from error


def wait_for_saves(mngr: ocp.CheckpointManager) -> None:
  """Blocks until the save in flight is complete; CheckpointSaveError if it failed."""
  try:
    mngr.wait_until_finished()
  except Exception as error:
    raise save_failure(str(mngr.directory), error) from error


def finish(mngr: ocp.CheckpointManager, *, after_error: bool = False, quiet: bool = False) -> None:
  """Waits for the save in flight to complete, then closes the manager.

  After another error (`after_error`) a failing save is logged instead of
  raised, so that the first error is the one reported.
  """
  try:
    wait_for_saves(mngr)
  except CheckpointSaveError as failure:
    if not after_error:
      raise
    if not quiet:
      logging.error("%s", failure)
  finally:
    try:
      mngr.close()
    except Exception as error:  # a broken save can leave the manager unclosable
      logging.warning("Closing the checkpoint manager of %s failed: %s", mngr.directory, error)


@contextlib.contextmanager
def completing_saves(mngr: ocp.CheckpointManager):
  """The block's saves are complete (or reported failed) and the manager is
  closed however the block ends: an error or a preemption inside it never
  loses a save already started."""
  try:
    yield mngr
  except CheckpointSaveError:
    finish(mngr, after_error=True, quiet=True)  # already said
    raise
  except BaseException:
    finish(mngr, after_error=True)
    raise
  finish(mngr)


def complete_steps(directory: str) -> list[int]:
  """Steps whose checkpoints were finalised, read from storage (not from a
  manager whose last save may have failed). Half-written steps are not
  listed: orbax only gives a step its final name once it is complete."""
  try:
    return sorted(manager(directory, read_only=True).all_steps())  # read at creation
  except Exception:  # an unreadable directory: nothing we can vouch for
    return []


def save_failure(directory: str, error: BaseException) -> CheckpointSaveError:
  """A CheckpointSaveError that says what failed, what is safe and what to do."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  disk_full = (
    getattr(error, "errno", None) == errno.ENOSPC
    or "No space left" in text
    or "os_error_code='28'" in text
  )
  steps = complete_steps(directory)
  safe = (
    f"The complete checkpoints already there are untouched: steps {steps}; the "
    "unfinished one (a *.orbax-checkpoint-tmp directory) is never resumed from."
    if steps
    else "No complete checkpoint had been written there yet."
  )
  resume = f"it resumes from step {steps[-1]}" if steps else "it starts from scratch"
  cause = (
    "The disk (or bucket quota) is full: free space"
    if disk_full
    else "Fix the cause (space, permissions, quota, the bucket's reachability)"
  )
  return CheckpointSaveError(
    f"Writing a checkpoint to {directory} failed: {type(error).__name__}: {text}\n"
    f"{safe}\n{cause}, or copy the workdir somewhere with room and point --workdir at "
    f"the copy, then rerun the same command: {resume}."
  )


def _latest_step(mngr: ocp.CheckpointManager, directory: str, step: int | None) -> int:
  if step is None:
    step = mngr.latest_step()
  if step is None:
    raise CheckpointError(
      f"no complete checkpoint in {directory!r}: expected an orbax checkpoint "
      "directory (e.g. a run's workdir/checkpoints, or the output of "
      "`python -m mae_jax.convert`)."
    )
  if step not in mngr.all_steps():
    raise CheckpointError(
      f"checkpoint step {step} not in {directory!r}; steps: {mngr.all_steps()}."
    )
  return step


def read_metadata(directory: str, step: int | None = None) -> dict:
  mngr = manager(directory, read_only=True)
  step = _latest_step(mngr, directory, step)
  return mngr.restore(step, args=ocp.args.Composite(**{METADATA: ocp.args.JsonRestore()}))[METADATA]


def restore_state(directory: str, abstract_state: Any, step: int | None = None) -> Any:
  """Restores the parts of `state` that `abstract_state` names.

  `abstract_state` is a (possibly partial) tree of `jax.ShapeDtypeStruct`s
  with shardings (e.g. from `jax.eval_shape`); leaves without a sharding
  land on the first local device.
  """
  mngr = manager(directory, read_only=True)
  step = _latest_step(mngr, directory, step)
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore_args(leaf):
    sharding = getattr(leaf, "sharding", None) or default
    return ocp.ArrayRestoreArgs(dtype=leaf.dtype, sharding=sharding, global_shape=leaf.shape)

  args = ocp.args.PyTreeRestore(
    item=abstract_state,
    restore_args=jax.tree.map(restore_args, abstract_state),
    partial_restore=True,
  )
  return mngr.restore(step, args=ocp.args.Composite(**{STATE: args}))[STATE]


def restore_run_state(directory: str, step: int, abstract_state: Any) -> Any:
  """A training job's own state at checkpoint `step`, for every job
  (pretraining, the probe, fine-tuning): the one place a run resumes.

  `abstract_state` (shapes, dtypes, shardings) has `to_checkpoint()` and its
  class `from_checkpoint(tree)`. A checkpoint that cannot be read, whatever
  orbax or tensorstore raise, is a CheckpointError saying what to do.
  """
  try:
    restored = restore_state(directory, abstract_state.to_checkpoint(), step=step)
  except Exception as error:  # orbax/tensorstore raise many types for a damaged file
    _drop_closed_event_loop_reports()
    raise CheckpointError(
      f"checkpoint step {step} in {directory} could not be read ({type(error).__name__}: "
      f"{_first_words(error)}). It is damaged "
      "or was written by another program. Nothing was changed: move "
      f"{storage.join(directory, str(step))} aside to resume from the previous step, "
      "or use a new --workdir."
    ) from error
  return type(abstract_state).from_checkpoint(restored)


def _first_words(error: Exception, limit: int = 160) -> str:
  """The start of an orbax/tensorstore error: its first line, without the
  TensorStore spec it appends (hundreds of characters of internals)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text.split(" See full TensorStore details")[0]
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _drop_closed_event_loop_reports() -> None:
  """A damaged checkpoint fails on its first bad read while tensorstore
  finishes the others; their completion callbacks then find orbax's event
  loop closed ("RuntimeError: Event loop is closed"), and orbax's other
  failed read coroutines are collected unawaited: each is reported as
  unraisable, with a traceback, as the job exits. Those reports alone are
  dropped: the CheckpointError has said what happened."""
  previous = sys.unraisablehook

  def hook(unraisable):
    value, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
      return
    previous(unraisable)

  sys.unraisablehook = hook


def saved_state_metadata(directory: str, step: int | None = None) -> dict:
  """The checkpoint's `state` tree of orbax array metadata (shape, dtype), read without the data."""
  mngr = manager(directory, read_only=True)
  step = _latest_step(mngr, directory, step)
  metadata = ocp.PyTreeCheckpointer().metadata(
    storage.join(storage.absolute(directory), str(step), STATE)
  )
  return getattr(metadata.item_metadata, "tree", metadata.item_metadata)


def saved_params_metadata(directory: str, step: int | None = None) -> dict:
  """The `params` part of `saved_state_metadata`."""
  return saved_state_metadata(directory, step)["params"]


def saved_param_groups(directory: str, step: int | None = None) -> set[str]:
  """Top-level parameter groups in a checkpoint, e.g. {"encoder", "decoder"}."""
  return set(saved_params_metadata(directory, step))


def model_metadata(config: ModelConfig) -> dict:
  return dataclasses.asdict(config)


def config_from_metadata(metadata: Mapping) -> ModelConfig:
  """The ModelConfig a checkpoint's metadata records (fields it does not
  know, from another version, are left out)."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  return ModelConfig(**{k: v for k, v in metadata["model"].items() if k in fields}).validate()


def architecture_differences(saved: Mapping, config: ModelConfig) -> list[str]:
  """Human-readable list of architecture fields where `saved` differs."""
  current = dataclasses.asdict(config)
  return [
    f"{name}: checkpoint {saved.get(name)!r} vs config {current[name]!r}"
    for name in ARCHITECTURE_FIELDS
    if name in saved and saved[name] != current[name]
  ]


def check_architecture(directory: str, metadata: Mapping, config: ModelConfig) -> None:
  differences = architecture_differences(metadata.get("model", {}), config)
  if differences:
    raise CheckpointError(
      f"the checkpoint in {directory!r} is of another architecture: "
      + "; ".join(differences)
      + ". Use a config with the checkpoint's sizes, or another checkpoint."
    )


def write_params(
  directory: str,
  params: Any,
  config: ModelConfig,
  *,
  source: str,
  param_layout: str = "layer_i",
  licence: dict | None = None,
) -> str:
  """Writes converted weights as a one-step (step 0) checkpoint; returns its
  path. `licence` ({"spdx", "text"}) is recorded for exports to carry."""
  mngr = manager(directory, enable_async=False)
  if mngr.all_steps():
    raise CheckpointError(
      f"{directory!r} already holds checkpoints {mngr.all_steps()}: refusing to "
      "overwrite; choose an empty output directory."
    )
  metadata = {"model": model_metadata(config), "source": source, "param_layout": param_layout}
  if licence:
    metadata["licence"] = licence
  save(mngr, 0, {"params": params, "step": 0}, metadata, force=True)
  mngr.wait_until_finished()
  mngr.close()
  return storage.join(storage.absolute(directory), "0")
