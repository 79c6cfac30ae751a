"""Metrics out of a run: `metrics.jsonl` and TensorBoard event files.

Only process 0 writes (every process computes the same reduced values).
The JSONL file is appended to, so a resumed run continues the same file;
each line is one logged step: {"step": ..., "loss": ..., ...}. Lines past the
step a run starts from (written by a run that died before its next
checkpoint) are dropped first, so the file always tells one history.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np


class MetricsWriter:
  def __init__(self, workdir: str, *, start_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    self._summary_writer = None
    if enabled:
      import tensorflow as tf  # the input pipeline imports it anyway

      self._tf = tf
      self._drop_lines_after(start_step)
      self._summary_writer = tf.summary.create_file_writer(self.tensorboard_dir)

  def _drop_lines_after(self, step: int) -> None:
    gfile = self._tf.io.gfile
    if not gfile.exists(self.jsonl_path):
      return
    with gfile.GFile(self.jsonl_path) as f:
      lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
      with gfile.GFile(self.jsonl_path, "w") as f:
        f.write("".join(kept))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {key: _to_python(value) for key, value in metrics.items()}
    with self._tf.io.gfile.GFile(self.jsonl_path, "a") as f:
      f.write(json.dumps({"step": int(step), **values}) + "\n")
    with self._summary_writer.as_default(step=int(step)):
      for key, value in values.items():
        if isinstance(value, (int, float)):
          self._tf.summary.scalar(key, value)
    self._summary_writer.flush()

  def close(self) -> None:
    if self._summary_writer is not None:
      self._summary_writer.close()


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
