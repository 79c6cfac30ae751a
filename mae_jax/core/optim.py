"""Optimizer and learning-rate schedule of the reference pretraining recipe.

AdamW (0.9, 0.95), weight decay 0.05 on weight matrices and on the cls and
mask tokens (the reference decays every parameter that is not 1-D or a bias;
its tokens are (1, 1, D)). Our qkv bias is (3, heads, head_dim) and our
LayerNorm scales are 1-D: the decay mask goes by parameter *name*, which is
what the reference's rule amounts to. lr = base_lr * global_batch / 256,
per-step linear warm-up from 0 then half-cycle cosine to `min_lr`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

DECAYED_NAMES = ("kernel", "cls_token", "mask_token")


def decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay (by leaf name)."""

  def decayed(path, _):
    name = getattr(path[-1], "key", None)
    return name in DECAYED_NAMES

  return jax.tree_util.tree_map_with_path(decayed, params)


def peak_learning_rate(base_lr: float, global_batch_size: int) -> float:
  """The reference's linear scaling rule: base_lr * batch / 256."""
  return base_lr * global_batch_size / 256


def learning_rate_schedule(
  *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> optax.Schedule:
  if warmup_steps >= total_steps:
    return optax.linear_schedule(0.0, peak_lr, max(total_steps, 1))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_lr,
    warmup_steps=warmup_steps,
    decay_steps=total_steps,
    end_value=min_lr,
  )


def adamw(
  schedule: optax.Schedule,
  *,
  b1: float,
  b2: float,
  weight_decay: float,
  grad_clip_norm: float | None = None,
) -> optax.GradientTransformation:
  """AdamW with name-based decay mask; optional clipping (reference: none)."""
  parts = []
  if grad_clip_norm:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  parts.append(
    optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8, weight_decay=weight_decay, mask=decay_mask)
  )
  return optax.chain(*parts)


def schedule_of(optimizer, plan) -> optax.Schedule:
  """Every training job's schedule: warm-up then cosine to `min_lr`, at
  lr = base_lr x global batch / 256, over the plan's steps. `optimizer` is
  the config's optimizer section."""
  return learning_rate_schedule(
    peak_lr=peak_learning_rate(optimizer.base_lr, plan.global_batch_size),
    warmup_steps=plan.warmup_steps,
    total_steps=plan.total_steps,
    min_lr=optimizer.min_lr,
  )


def pretraining_optimizer(optimizer, plan) -> tuple[optax.Schedule, optax.GradientTransformation]:
  """(schedule, AdamW) of pretraining, from the config's optimizer section."""
  schedule = schedule_of(optimizer, plan)
  tx = adamw(
    schedule,
    b1=optimizer.b1,
    b2=optimizer.b2,
    weight_decay=optimizer.weight_decay,
    grad_clip_norm=optimizer.grad_clip_norm or None,
  )
  return schedule, tx
