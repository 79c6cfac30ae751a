"""The step loop of every training job: pretraining, the linear probe, fine-tuning.

Each step: take the next global batch (the time spent waiting for it is the
input wait), run the train step, record whether it was finite. At log
steps: the interval's summary to metrics.jsonl and TensorBoard (means,
except `loss` and `learning_rate`, the logged step's own), skipped
non-finite steps, undecodable images replaced (summed over hosts) and
throughput, which counts train steps only. Then the periodic hooks
(evaluation, the k-NN monitor), each at its own interval and at the last
step, and checkpoints. Last, a preemption notice is answered (save, wait,
exit "resumable", 75): after the step's row and hooks, so a preempted
step is never missing from metrics.jsonl.

Every checkpoint also carries the loop's unfinished logging interval (the
metrics of the steps since the last log step, the replaced-image count,
the skipped steps so far) in its metadata: a run resumed from it logs the
very rows an uninterrupted run logs (timing fields aside).

What differs between jobs is passed in: the step, a batches factory (start
step -> iterator, so a resumed run continues the same stream) and the hooks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from mae_jax.core import checkpointing
from mae_jax.core.batches import NUM_REPLACED, close_iterator
from mae_jax.core.metrics import MetricsWriter
from mae_jax.core.nonfinite import FiniteCheck
from mae_jax.core.preemption import PreemptionWatcher, save_and_stop, stop_before_the_first_step
from mae_jax.core.progress import make_progress

# The checkpoint metadata key of the loop's unfinished logging interval.
LOOP_METADATA = "loop_interval"


@dataclasses.dataclass(frozen=True)
class Periodic:
  """A hook run every `every_steps` steps and after the last: state -> metrics."""

  every_steps: int
  run: Callable[[Any], dict]
  digits: int = 4  # decimals when printed
  timed: bool = False  # print how long it took


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the loop reads of a job's config."""

  total_steps: int
  global_batch_size: int
  log_every_steps: int
  checkpoint_every_steps: int
  nonfinite: str
  progress_bar: str
  # "examples_per_sec" for jobs whose examples are not images (cached features).
  throughput_key: str = "images_per_sec"
  # Wait for step s-1 before dispatching step s. Evaluation jobs set it:
  # XLA:CPU's in-process collectives (fake devices) can jam under a long
  # queue of tiny probe steps. The host still prepares the next batch while
  # the device works.
  one_step_in_flight: bool = False

  @classmethod
  def from_config(cls, config, total_steps: int, **overrides) -> LoopSettings:
    return cls(
      total_steps=total_steps,
      global_batch_size=config.global_batch_size,
      log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps,
      nonfinite=config.nonfinite,
      progress_bar=config.progress_bar,
      **overrides,
    )


def run_steps(
  settings: LoopSettings,
  workdir: str,
  mngr,
  metadata: dict,
  state: Any,
  train_step: Callable[[Any, dict], tuple[Any, dict]],
  batches: Callable[[int], Iterator[dict]],
  hooks: Sequence[Periodic] = (),
  *,
  is_main: bool,
) -> tuple[Any, dict]:
  """Runs steps from `state.step` to `settings.total_steps`; returns (state, final metrics).

  `state` has `step` and `to_checkpoint()`; `train_step` returns metrics with
  "loss", "learning_rate" and a "nonfinite" flag (1: the step kept the old
  state). A batch may carry the host's count of replaced images under
  `NUM_REPLACED`; the loop removes it before the step.
  """
  start = int(jax.device_get(state.step))
  total = settings.total_steps
  if start >= total:
    logging.info("Checkpoint step %d >= total steps %d: nothing to train.", start, total)
  else:
    stop_before_the_first_step(start, str(mngr.directory))
  writer = MetricsWriter(workdir, start_step=start, enabled=is_main)
  progress = make_progress(settings.progress_bar, start, total, is_main)
  watcher = PreemptionWatcher()
  run = _Run(settings, mngr, metadata, writer, progress, watcher, hooks)
  carried = _carried_interval(mngr, start)
  stream = batches(start)
  try:
    return run(state, train_step, stream, start, carried)
  finally:
    close_iterator(stream)
    watcher.close()
    progress.close()
    writer.close()


@dataclasses.dataclass
class _Run:
  settings: LoopSettings
  mngr: Any
  metadata: dict
  writer: MetricsWriter
  progress: Any
  watcher: PreemptionWatcher
  hooks: Sequence[Periodic]

  def __call__(self, state, train_step, stream, start, carried: dict):
    settings, progress = self.settings, self.progress
    total = settings.total_steps
    finite_check = FiniteCheck(settings.nonfinite, self.mngr)
    finite_check.skipped_steps = carried.get("skipped_steps", 0)
    final: dict = {"step": start}
    # The interval's metrics so far; after a resume, those the checkpoint carried.
    pending: list[dict] = list(carried.get("pending", []))
    # Throughput counts train steps only: hook and checkpoint time is
    # subtracted from the interval (`paused`).
    interval_start, input_wait, interval_steps, paused = time.perf_counter(), 0.0, 0, 0.0
    # This host's undecodable images replaced in the interval; a carried
    # count is the sum over hosts, so only process 0 takes it back.
    replaced = carried.get("replaced", 0) if jax.process_index() == 0 else 0
    in_flight = None
    for step in range(start, total):
      fetch_start = time.perf_counter()
      batch = next(stream)
      input_wait += time.perf_counter() - fetch_start
      replaced += batch.pop(NUM_REPLACED, 0)
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      state, metrics = train_step(state, batch)
      if settings.one_step_in_flight:
        in_flight = metrics
      pending.append(metrics)
      interval_steps += 1
      done = step + 1
      finite_check.record(done, metrics)
      if step == start:  # the first step includes compilation: time it apart
        jax.block_until_ready(metrics)
        compile_seconds = time.perf_counter() - interval_start
        logging.info("First step (with compilation) took %.1f s.", compile_seconds)
        self.writer.write(done, {"compile_seconds": compile_seconds})
        interval_start, input_wait, interval_steps = time.perf_counter(), 0.0, 0
      last = done == total
      if done % settings.log_every_steps == 0 or last:
        summary = summarise(pending)
        summary["skipped_steps"] = finite_check.check()
        # Summed over hosts; every host logs at the same steps.
        summary["replaced_images"] = int(np.sum(multihost_utils.process_allgather(replaced)))
        elapsed = time.perf_counter() - interval_start - paused
        if interval_steps:
          summary[settings.throughput_key] = interval_steps * settings.global_batch_size / elapsed
          summary["input_wait_fraction"] = input_wait / elapsed
        self.writer.write(done, summary)
        progress.update(done, summary, throughput_key=settings.throughput_key)
        final.update(summary)
        pending, interval_steps, input_wait, paused, replaced = [], 0, 0.0, 0.0, 0
        interval_start = time.perf_counter()
      pause_start = time.perf_counter()
      for hook in self.hooks:
        if done % hook.every_steps == 0 or last:
          # Before the next step donates the state's buffers; synchronous.
          final.update(self.run_hook(hook, done, state))
      saved = done % settings.checkpoint_every_steps == 0 or last
      if saved:
        self.save(done, state, finite_check, pending, replaced)
      paused += time.perf_counter() - pause_start
      final["step"] = done
      # Answered last: the step's row, hooks and checkpoint are all done.
      if self.watcher.reached(done):
        if not saved:
          self.save(done, state, finite_check, pending, replaced, force=True)
        save_and_stop(self.mngr, done, progress.log, self.watcher.interrupted)
    if start >= total:  # a finished run asked again: just report
      for hook in self.hooks:
        final.update(hook.run(state))
    return state, final

  def save(self, done, state, finite_check, pending, replaced, *, force=False) -> None:
    """Checkpoints `done` (after the non-finite check: never a bad state)
    with the unfinished logging interval in its metadata."""
    skipped = finite_check.check()
    interval = {
      "pending": [
        {key: float(value) for key, value in metrics.items()} for metrics in jax.device_get(pending)
      ],
      # Collective: every host saves at the same steps.
      "replaced": int(np.sum(multihost_utils.process_allgather(replaced))),
      "skipped_steps": skipped,
    }
    metadata = {**self.metadata, LOOP_METADATA: interval}
    checkpointing.save(self.mngr, done, state.to_checkpoint(), metadata, force=force)

  def run_hook(self, hook: Periodic, done: int, state) -> dict:
    hook_start = time.perf_counter()
    metrics = hook.run(state)
    self.writer.write(done, metrics)
    took = f" ({time.perf_counter() - hook_start:.1f} s)" if hook.timed else ""
    self.progress.log(
      f"step {done}: "
      + ", ".join(f"{key} {value:.{hook.digits}f}" for key, value in metrics.items())
      + took
    )
    return metrics


def _carried_interval(mngr, start: int) -> dict:
  """The unfinished logging interval saved with checkpoint `start` ({} for a
  fresh run, or a checkpoint from before intervals were carried)."""
  if start == 0 or start not in mngr.all_steps():
    return {}
  metadata = checkpointing.read_metadata(str(mngr.directory), start)
  return metadata.get(LOOP_METADATA, {})


def summarise(pending: list[dict]) -> dict:
  """Means over the logging interval, except `loss` and `learning_rate`: the
  logged step's own values (`loss_avg` is the interval mean). Means are
  taken in float32, the steps' dtype, so an interval carried through a
  checkpoint (as Python floats) gives the same numbers."""
  stacked = jax.device_get(pending)
  summary = {
    key: float(np.mean(np.asarray([m[key] for m in stacked], np.float32))) for key in stacked[0]
  }
  summary["loss_avg"] = summary["loss"]
  summary["loss"] = float(stacked[-1]["loss"])
  summary["learning_rate"] = float(stacked[-1]["learning_rate"])
  return summary
