"""LARS, the linear-probe optimizer of the reference (its util/lars.py).

Per parameter tensor p with gradient g, at learning rate lr:

  if p.ndim > 1:                      # weight matrices only
    d = g + weight_decay * p
    q = trust * ||p|| / ||d||         (1 when either norm is 0)
    d = q * d
  else:                               # biases, 1-D: no decay, no scaling
    d = g
  mu = momentum * mu + d
  p  = p - lr * mu

Note the learning rate multiplies the momentum buffer, not the gradient
going into it, so the schedule acts on the accumulated direction (optax's
`lars` scales before the momentum; this composes the pieces in the
reference's order).
"""

from __future__ import annotations

import jax
import optax


def is_matrix(params):
  """True for the parameters the reference decays and trust-scales (ndim > 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def lars(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.9,
  trust_coefficient: float = 0.001,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  return optax.chain(
    optax.masked(optax.add_decayed_weights(weight_decay), is_matrix),
    optax.masked(
      optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=0.0), is_matrix
    ),
    optax.trace(decay=momentum, nesterov=False),
    optax.scale_by_learning_rate(learning_rate),
  )
