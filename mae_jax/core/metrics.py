"""Metrics out of a run: `metrics.jsonl` and TensorBoard event files.

TensorBoard events are written by tensorboardX (no TensorFlow), every file
through `mae_jax.storage` (local or gs://, as orbax): on a bucket an event
file is kept in memory and uploaded whole at each flush, through gcsfs like
every other object of the run (tensorboardX's own bucket writer uses a
second client and uploads once more when garbage-collected, even after
the run has closed it).

Only process 0 writes (every process computes the same reduced values).
The JSONL file only grows, so a resumed run continues the same file; each
line is one logged step: {"step": ..., "loss": ..., ...}. Lines past the
step a run starts from (written by a run that died before its next
checkpoint) are dropped first, so the file always tells one history. On a
bucket, where objects cannot be appended to, the file is rewritten whole
from the run's copy at every row (`storage.AppendOnlyText`).
"""

from __future__ import annotations

import io
import json
from typing import Mapping

import numpy as np
from absl import logging

from mae_jax import storage


class MetricsWriter:
  def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = storage.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = storage.join(workdir, "tensorboard")
    self._summary_writer = None
    self._tensorboard_failed = False
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter
      from tensorboardX.record_writer import register_writer_factory

      register_writer_factory("gs", _BucketEventFiles())
      self._jsonl = storage.AppendOnlyText(self.jsonl_path, self._lines_up_to(start_step))
      self._summary_writer = SummaryWriter(self.tensorboard_dir, flush_secs=30)

  def _lines_up_to(self, step: int) -> str:
    """The file's rows up to `step`; the file is rewritten first if it had more."""
    if not storage.exists(self.jsonl_path):
      return ""
    lines = [
      line + "\n" for line in storage.read_text(self.jsonl_path).splitlines() if line.strip()
    ]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
      storage.write_text(self.jsonl_path, "".join(kept))
    return "".join(kept)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {key: _to_python(value) for key, value in metrics.items()}
    try:
      self._jsonl.append(json.dumps({"step": int(step), **values}) + "\n")
    except Exception as error:  # gcsfs gave up its retries; OSError on a disk
      checkpoints = storage.join(storage.parent(self.jsonl_path), "checkpoints")
      raise storage.WriteFailed(
        f"Writing {self.jsonl_path} failed ({storage.describe_error(error)}). The rows and "
        f"checkpoints already written are intact. Once the storage answers again, rerun the "
        f"same command: it resumes from the last complete checkpoint in {checkpoints}."
      ) from error
    try:
      for key, value in values.items():
        if isinstance(value, (int, float)):
          self._summary_writer.add_scalar(key, value, global_step=int(step))
      self._summary_writer.flush()
    except OSError as error:
      # TensorBoard is a view of metrics.jsonl: a failed flush (a full disk)
      # is reported once and does not stop the run; the next checkpoint save
      # meets the same disk and stops it cleanly, naming the cause.
      if not self._tensorboard_failed:
        logging.warning("Could not write TensorBoard events in %s: %s", self.tensorboard_dir, error)
      self._tensorboard_failed = True

  def close(self) -> None:
    """Closes the event file. Runs on every exit path, including a failed
    checkpoint save on a full disk: a failure to flush the last events is
    logged, not raised, so it cannot replace the error that ended the run."""
    if self._summary_writer is not None:
      writer, self._summary_writer = self._summary_writer, None
      try:
        writer.close()
      except OSError as error:
        logging.warning(
          "Could not flush the TensorBoard events in %s: %s", self.tensorboard_dir, error
        )


class _BucketEventFile:
  """One TensorBoard event file on a bucket, uploaded whole when flushed."""

  def __init__(self, location: str):
    self.location, self._buffer, self._uploaded = location, io.BytesIO(), -1

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    if self._buffer.tell() != self._uploaded:
      storage.write_bytes(self.location, self._buffer.getvalue())
      self._uploaded = self._buffer.tell()

  def close(self) -> None:
    self.flush()


class _BucketEventFiles:
  """tensorboardX's writer factory for gs:// (`register_writer_factory`)."""

  def open(self, location: str) -> _BucketEventFile:
    return _BucketEventFile(location)

  def directory_check(self, location: str) -> None:
    del location  # a bucket has no folders to make


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
