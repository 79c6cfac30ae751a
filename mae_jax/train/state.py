"""Training state: what a checkpoint holds and the train step carries."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: optax.OptState

  def to_checkpoint(self) -> dict:
    return {"step": self.step, "params": self.params, "opt_state": self.opt_state}

  @classmethod
  def from_checkpoint(cls, tree: dict) -> "TrainState":
    return cls(step=jnp.asarray(tree["step"]), params=tree["params"], opt_state=tree["opt_state"])
