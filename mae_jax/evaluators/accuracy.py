"""The classifiers' evaluator: top-1 / top-5 accuracy and loss over the eval split.

Sums, not means, so padded batches (mask 0) and hosts combine exactly. The
linear probe and fine-tuning give their logits; k-NN reuses the sums.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax


def accuracy_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
  """Summed (not averaged) correct counts and loss, so padded batches combine exactly."""
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = top == labels[:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
    "correct1": jnp.sum(hits[:, 0] * mask),
    "correct5": jnp.sum(hits.any(-1) * mask),
    "loss_sum": jnp.sum(loss * mask),
    "count": jnp.sum(mask),
  }


def accuracy_metrics(sums: dict, num_classes: int, prefix: str = "eval_") -> dict:
  sums = jax.device_get(sums)
  count = max(float(sums["count"]), 1.0)
  metrics = {
    f"{prefix}top1": 100.0 * float(sums["correct1"]) / count,
    f"{prefix}loss": float(sums["loss_sum"]) / count,
  }
  if num_classes > 5:
    metrics[f"{prefix}top5"] = 100.0 * float(sums["correct5"]) / count
  return metrics


def accuracy_over(
  eval_step: Callable, state: Any, batches: Iterator[dict], num_classes: int, max_batches: int = -1
) -> dict:
  """Top-1 / top-5 (percent) and loss over one pass of `batches`;
  `eval_step(state, batch)` returns `accuracy_sums`."""
  totals = None
  for index, batch in enumerate(batches):
    if 0 <= max_batches <= index:
      break
    if totals is not None:
      # One step in flight, as the evaluation jobs' loop: XLA:CPU's
      # collectives between processes (Gloo) can jam under a queue of tiny
      # steps. The next batch was read meanwhile, so input still overlaps.
      jax.block_until_ready(totals)
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return accuracy_metrics(totals, num_classes)


def accuracy_evaluator(
  logits_fn: Callable,
  batches: Callable[[], Iterator[dict]],
  num_classes: int,
  *,
  out_sharding,
  in_shardings=None,
  frozen: tuple = (),
) -> Callable[[Any], dict]:
  """state -> {"eval_top1", "eval_top5", "eval_loss"} over one pass of
  `batches()`; `logits_fn(state, batch, *frozen)` is jitted once."""
  sums = jax.jit(
    lambda state, batch, *inputs: accuracy_sums(
      logits_fn(state, batch, *inputs), batch["label"], batch["mask"]
    ),
    in_shardings=in_shardings,
    out_shardings=out_sharding,
  )
  return lambda state: accuracy_over(
    lambda s, batch: sums(s, batch, *frozen), state, batches(), num_classes
  )
