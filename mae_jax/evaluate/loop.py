"""The step loop of the linear probe and fine-tuning: log, evaluate, checkpoint.

The same rhythm as pretraining's loop (and its metrics.jsonl / TensorBoard
writer and progress bar), over any state with `step` and `to_checkpoint()`,
any batch stream and any evaluation function.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import jax

from mae_jax import checkpointing
from mae_jax.metrics import MetricsWriter
from mae_jax.train.pretrain import make_progress, summarise


def train_loop(config, plan, workdir: str, mngr, metadata: dict, state: Any,
               train_step: Callable, batches: Callable[[int], Iterator[dict]],
               evaluate: Callable[[Any], dict], *, is_main: bool) -> tuple[Any, dict]:
  """Runs steps from `state.step` to `plan.total_steps`; returns (state, final metrics).

  Args:
    batches: start_step -> iterator of global batches, replaying the stream
      from that step (resume).
    evaluate: state -> {"eval_top1": ..., ...}; runs every
      `config.eval_every_steps` and at the end.
  """
  start = int(jax.device_get(state.step))
  total = plan.total_steps
  writer = MetricsWriter(workdir, start_step=start, enabled=is_main)
  progress = make_progress(config.progress_bar, start, total, is_main)
  stream = batches(start)
  final: dict = {"step": start}
  pending, interval_start, interval_steps = [], time.perf_counter(), 0
  in_flight = None
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
    interval_steps += 1
    done = step + 1
    last = done == total
    if done % config.log_every_steps == 0 or last:
      summary = summarise(pending)
      summary["examples_per_sec"] = (interval_steps * config.global_batch_size
                                     / (time.perf_counter() - interval_start))
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
      checkpointing.save(mngr, done, state.to_checkpoint(), metadata)
    if done % config.log_every_steps == 0 or last:
      interval_start = time.perf_counter()  # evaluation and saving are not throughput
    final["step"] = done
  progress.close()
  if start >= total:  # a finished run asked again: just report
    final.update(evaluate(state))
  writer.close()
  return state, final
