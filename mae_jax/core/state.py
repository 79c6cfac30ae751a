"""Training state: what a checkpoint holds and the train step carries, its
shardings on a mesh, and the mesh context the model is traced under."""

from __future__ import annotations

import contextlib
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mae_jax.core import sharding
from mae_jax.model.mae import MaskedAutoencoder


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


@contextlib.contextmanager
def mesh_context(mesh: jax.sharding.Mesh, rules):
  """Mesh and logical-axis rules in scope while tracing, so the model's
  `with_logical_constraint` annotations become sharding constraints."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def create_state(
  model: MaskedAutoencoder, tx: optax.GradientTransformation, key: jax.Array, *, boxed: bool = False
) -> TrainState:
  cfg = model.config
  dummy = jnp.zeros((1, *cfg.image_hw, cfg.channels), jnp.float32)
  params = model.init({"params": key, "masking": key}, dummy, train=False)["params"]
  if boxed:  # only used under eval_shape, to read the logical axis names
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=None)
  params = nn.unbox(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_specs(model, tx, mesh, rules) -> tuple[TrainState, TrainState]:
  """(shardings, abstract state): the specs of the train state, without allocating it."""
  key = jax.random.key(0)
  boxed = jax.eval_shape(lambda k: create_state(model, tx, k, boxed=True), key)
  param_shardings = sharding.logical_shardings(boxed.params, mesh, rules)
  abstract = jax.eval_shape(lambda k: create_state(model, tx, k), key)
  replicated = sharding.replicated(mesh)
  # Optimizer moments mirror the parameters; counts and the like replicate.
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract.opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )
  shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
  return shardings, abstract


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """Abstract arrays (shape, dtype) that also carry their sharding."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
