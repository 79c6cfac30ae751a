"""The step loop of the linear probe and fine-tuning: log, evaluate, checkpoint.

The same rhythm as pretraining's loop (and its metrics.jsonl / TensorBoard
writer and progress bar), over any state with `step` and `to_checkpoint()`,
any batch stream and any evaluation function; non-finite steps stop the
run or are counted as there (`mae_jax.train.nonfinite`), and a preemption
notice (SIGTERM, or JAX's sync point on several hosts) saves, waits and
exits "resumable" (75) as there.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import jax

from mae_jax import checkpointing
from mae_jax.metrics import MetricsWriter
from mae_jax.train.nonfinite import FiniteCheck
from mae_jax.train.preemption import PreemptionWatcher, save_and_stop
from mae_jax.train.pretrain import make_progress, summarise


def train_loop(
  config,
  plan,
  workdir: str,
  mngr,
  metadata: dict,
  state: Any,
  train_step: Callable,
  batches: Callable[[int], Iterator[dict]],
  evaluate: Callable[[Any], dict],
  *,
  is_main: bool,
) -> tuple[Any, dict]:
  """Runs steps from `state.step` to `plan.total_steps`; returns (state, final metrics).

  `train_step` returns metrics with a "nonfinite" flag (1: the step kept
  the old state). At each log step and before every save the run stops on
  one (`NonFiniteError`), or, with config.nonfinite=skip, counts them in
  `skipped_steps`.

  Args:
    batches: start_step -> iterator of global batches, replaying the stream
      from that step (resume).
    evaluate: state -> {"eval_top1": ..., ...}; runs every
      `config.eval_every_steps` and at the end.
  """
  start = int(jax.device_get(state.step))
  writer = MetricsWriter(workdir, start_step=start, enabled=is_main)
  progress = make_progress(config.progress_bar, start, plan.total_steps, is_main)
  watcher = PreemptionWatcher()
  try:
    return _run(
      config,
      plan,
      mngr,
      metadata,
      state,
      train_step,
      batches(start),
      evaluate,
      writer,
      progress,
      watcher,
      start,
    )
  finally:
    watcher.close()
    progress.close()
    writer.close()


def _run(
  config,
  plan,
  mngr,
  metadata,
  state,
  train_step,
  stream,
  evaluate,
  writer,
  progress,
  watcher,
  start,
):
  total = plan.total_steps
  final: dict = {"step": start}
  pending, interval_start, interval_steps = [], time.perf_counter(), 0
  in_flight = None
  finite_check = FiniteCheck(config.nonfinite, mngr)
  for step in range(start, total):
    batch = next(stream)
    if in_flight is not None:
      # At most one step queued behind the running one: the host still
      # prepares the next batch while the device works, and XLA:CPU's
      # in-process collectives (fake devices) cannot jam under a long queue
      # of tiny probe steps, which they do.
      jax.block_until_ready(in_flight)
    state, metrics = train_step(state, batch)
    pending.append(metrics)
    in_flight = metrics
    finite_check.record(step + 1, metrics)
    interval_steps += 1
    done = step + 1
    last = done == total
    if watcher.reached(done):
      # As in pretraining: save this step, wait for it, exit "resumable".
      finite_check.check()
      save_and_stop(mngr, done, state.to_checkpoint(), metadata, progress.log)
    if done % config.log_every_steps == 0 or last:
      summary = summarise(pending)
      summary["skipped_steps"] = finite_check.check()
      summary["examples_per_sec"] = (
        interval_steps * config.global_batch_size / (time.perf_counter() - interval_start)
      )
      writer.write(done, summary)
      progress.update(done, {"images_per_sec": summary["examples_per_sec"], **summary})
      final.update(summary)
      pending, interval_steps = [], 0
    if done % config.eval_every_steps == 0 or last:
      eval_metrics = evaluate(state)
      writer.write(done, eval_metrics)
      progress.log(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in eval_metrics.items()))
      final.update(eval_metrics)
    if done % config.checkpoint_every_steps == 0 or last:
      finite_check.check()
      checkpointing.save(mngr, done, state.to_checkpoint(), metadata)
    if done % config.log_every_steps == 0 or last:
      interval_start = time.perf_counter()  # evaluation and saving are not throughput
    final["step"] = done
  if start >= total:  # a finished run asked again: just report
    final.update(evaluate(state))
  return state, final
