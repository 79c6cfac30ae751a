"""Gradient accumulation for the step engine (every training job).

The global batch is split into micro-batches that are scanned, and the
loss and gradients averaged: the reference's loss / accum_iter. When every
micro-batch's loss is a mean over the same number of terms, the average is
the full batch's loss and gradient, so k micro-batches give the update of
one full batch at 1/k of the activation memory.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def split_micro_batches(x: jax.Array, steps: int) -> jax.Array:
  """(B, ...) -> (steps, B / steps, ...). Micro-batch i takes rows i, i+k,
  i+2k, ...: every device keeps an equal share of each micro-batch, with no
  data movement (contiguous slices would put each on a few devices)."""
  return jnp.swapaxes(x.reshape((-1, steps) + x.shape[1:]), 0, 1)


def accumulate(
  grad_fn: Callable[[Any, Any, jax.Array], Any],
  params: Any,
  batch: Any,
  steps: int,
) -> Any:
  """The mean of `grad_fn(params, micro_batch, index)` (a pytree of arrays:
  the loss, its gradients, any auxiliary values) over the `steps`
  micro-batches of `batch` (a pytree of arrays with the batch first),
  scanned so only one micro-batch's activations are live.

  `index` (0..steps-1, traced) lets a caller draw per micro-batch
  randomness. steps == 1 is one plain call on the whole batch, index 0.
  """
  if steps == 1:
    return grad_fn(params, batch, 0)

  def add(carry, micro):
    micro_batch, index = micro
    return jax.tree.map(jnp.add, carry, grad_fn(params, micro_batch, index)), None

  micro_batches = jax.tree.map(lambda x: split_micro_batches(x, steps), batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  shapes = jax.eval_shape(lambda p, m: grad_fn(p, m, 0), params, first)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  sums, _ = jax.lax.scan(add, zeros, (micro_batches, jnp.arange(steps)))
  return jax.tree.map(lambda x: x / steps, sums)
