"""Top-1 / top-5 accuracy as sums, so padded batches and hosts combine exactly."""

from __future__ import annotations

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
