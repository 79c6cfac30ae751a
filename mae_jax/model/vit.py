"""Vision-transformer building blocks shared by the MAE encoder and decoder.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`,
...) and every large activation a logical constraint, so that sharding over
a (data, fsdp, tensor) mesh is chosen by rules in the config
(`mae_jax.core.sharding`), never by edits here. Outside a mesh context the
constraints are no-ops.

Initialisation follows the reference: xavier-uniform Linears with zero
bias. The reference's qkv is one fused (3D, D) Linear whose xavier bound is
sqrt(6 / 4D); here qkv is one `DenseGeneral` with kernel (D, 3, heads,
head_dim), whose fans are (D, 3D): the same bound, and the head axis stays
shardable.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYER_NORM_EPS = 1e-6  # the reference's partial(nn.LayerNorm, eps=1e-6)

xavier_uniform = nn.initializers.xavier_uniform
zeros = nn.initializers.zeros

BATCH_LENGTH_EMBED = ("activation_batch", "activation_length", "activation_embed")


def dense(features, axes: tuple[str, ...], *, dtype, param_dtype, name: str) -> nn.Dense:
  """A Linear initialised as the reference's, with logical axis names."""
  return nn.Dense(
    features,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nn.with_logical_partitioning(xavier_uniform(), axes),
    bias_init=nn.with_logical_partitioning(zeros, axes[-1:]),
    name=name,
  )


def layer_norm(*, dtype, param_dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=LAYER_NORM_EPS,
    dtype=dtype,
    param_dtype=param_dtype,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
    bias_init=nn.with_logical_partitioning(zeros, ("norm",)),
    name=name,
  )


class EinsumDense(nn.Module):
  """A Linear whose kernel keeps its head axes: y = einsum(x, kernel) + bias.

  `nn.DenseGeneral` initialises (and, under a mesh, constrains) a flattened
  2-D kernel, which would lose the logical names of the head axes; this
  keeps the full shape and gives the initialiser the right fans.

  The contracted axes are the kernel's leading `fan_in_axes` and x's
  trailing ones, so the product is one 2-D matmul: (tokens, fan_in) @
  (fan_in, fan_out), on reshapes that cost nothing. It is computed that way
  (XLA's CPU backend otherwise transposes the kernel for the head-axis
  einsums, in the forward and again in the backward pass, about 10 % of a
  ViT-B/16 step), unless a merged kernel axis other than the first of its
  group is sharded over the mesh (tensor parallelism over heads): then the
  einsum keeps the kernel's sharding.
  """

  equation: str
  kernel_shape: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  fan_in_axes: tuple[int, ...]
  fan_out_axes: tuple[int, ...]
  bias_shape: tuple[int, ...]
  bias_axes: tuple[str, ...]
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(
        xavier_uniform(in_axis=self.fan_in_axes, out_axis=self.fan_out_axes), self.kernel_axes
      ),
      self.kernel_shape,
      self.param_dtype,
    )
    bias = self.param(
      "bias", nn.with_logical_partitioning(zeros, self.bias_axes), self.bias_shape, self.param_dtype
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    contracted = len(self.fan_in_axes)
    if self._is_flat_matmul(x.ndim) and self._flattening_keeps_sharding():
      fan_in = int(np.prod(self.kernel_shape[:contracted]))
      out_shape = self.kernel_shape[contracted:]
      y = x.reshape(-1, fan_in) @ kernel.reshape(fan_in, -1)
      y = y.reshape(x.shape[: x.ndim - contracted] + tuple(out_shape))
      return y + bias
    return jnp.einsum(self.equation, x, kernel) + bias

  def _flattening_keeps_sharding(self) -> bool:
    """Merging kernel axes keeps a sharding only when none but the first
    (major) axis of each merged group is split over devices."""
    sharded = _sharded_axes(self.kernel_axes)
    contracted = len(self.fan_in_axes)
    return not any(sharded[1:contracted]) and not any(sharded[contracted + 1 :])

  def _is_flat_matmul(self, x_ndim: int) -> bool:
    """Whether the equation reads 'A C, C K -> A K' (C the leading kernel
    axes, also x's trailing ones): then it is one 2-D matmul."""
    contracted = len(self.fan_in_axes)
    inputs, output = self.equation.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    return (
      self.fan_in_axes == tuple(range(contracted))
      and len(lhs) == x_ndim
      and rhs[:contracted] == lhs[len(lhs) - contracted :]
      and output == lhs[: len(lhs) - contracted] + rhs[contracted:]
    )


def _sharded_axes(logical_axes: tuple[str, ...]) -> list[bool]:
  """For each logical axis: whether the current mesh and rules split it over
  a mesh axis of size > 1 (outside a mesh: never)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not nn.get_logical_axis_rules():
    return [False] * len(logical_axes)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  sharded = []
  for entry in nn.logical_to_mesh_axes(logical_axes):
    axes = entry if isinstance(entry, tuple) else (entry,)
    sharded.append(any(axis is not None and sizes.get(axis, 1) > 1 for axis in axes))
  return sharded


def attention_heads_first(qkv: jax.Array, dtype) -> jax.Array:
  """Softmax attention of (batch, length, 3, heads, head_dim) -> (batch,
  length, heads, head_dim), computed head-major: q, k and v are laid out
  (batch, heads, length, head_dim) once, so that both products are plain
  batched matmuls (no per-product transposes). The same function as
  `jax.nn.dot_product_attention` with its default scale, which is applied
  to q as the reference (timm) does; logits and softmax in float32.
  """
  head_dim = qkv.shape[-1]
  qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # (3, batch, heads, length, head_dim)
  names = ("activation_batch", "activation_heads", "activation_length", "activation_kv")
  query, key, value = (nn.with_logical_constraint(qkv[i], names) for i in range(3))
  query = query * jnp.asarray(1.0 / np.sqrt(head_dim), query.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, value)
  return jnp.transpose(out, (0, 2, 1, 3))


class Attention(nn.Module):
  """Multi-head self-attention with qkv bias (no attention dropout).

  `implementation="xla"` computes attention with explicit head-major
  einsums (`attention_heads_first`), which XLA compiles without transposing
  the projection kernels; "cudnn" and None go through
  `jax.nn.dot_product_attention` (fused kernels on GPU).
  """

  heads: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  implementation: str | None = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.heads
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Fans (D, 3D): the reference's fused-qkv xavier bound sqrt(6 / 4D).
    qkv = EinsumDense(
      "btd,dkhe->btkhe",
      (width, 3, self.heads, head_dim),
      ("embed", "qkv", "heads", "kv"),
      fan_in_axes=(0,),
      fan_out_axes=(1, 2, 3),
      bias_shape=(3, self.heads, head_dim),
      bias_axes=("qkv", "heads", "kv"),
      name="qkv",
      **kw,
    )(x)
    if self.implementation == "xla":
      out = attention_heads_first(qkv, qkv.dtype)
    else:
      query, key, value = (
        nn.with_logical_constraint(
          qkv[:, :, i],
          ("activation_batch", "activation_length", "activation_heads", "activation_kv"),
        )
        for i in range(3)
      )
      out = jax.nn.dot_product_attention(query, key, value, implementation=self.implementation)
    return EinsumDense(
      "bthe,hed->btd",
      (self.heads, head_dim, width),
      ("heads", "kv", "embed"),
      fan_in_axes=(0, 1),
      fan_out_axes=(2,),
      bias_shape=(width,),
      bias_axes=("embed",),
      name="out",
      **kw,
    )(out)


class Mlp(nn.Module):
  hidden: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = dense(self.hidden, ("embed", "mlp"), name="fc1", **kw)(x)
    # The reference uses torch's exact (erf) GELU; flax defaults to tanh.
    x = nn.gelu(x, approximate=False)
    x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_mlp"))
    return dense(width, ("mlp", "embed"), name="fc2", **kw)(x)


def drop_path(x: jax.Array, rate, rng: jax.Array) -> jax.Array:
  """Stochastic depth: drops the residual branch of whole samples."""
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  survive = jax.random.bernoulli(rng, keep, shape)
  return jnp.where(survive, x / keep, 0).astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).

  `drop_rate` is an argument (not an attribute) so that a scanned stack can
  feed each layer its own stochastic-depth rate.
  """

  heads: int
  mlp_ratio: float
  deterministic: bool = True
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = "xla"

  @nn.compact
  def __call__(self, x: jax.Array, drop_rate=0.0):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    width = x.shape[-1]
    branch = Attention(self.heads, implementation=self.attention_impl, name="attn", **kw)(
      layer_norm(name="norm1", **kw)(x)
    )
    x = x + self._drop_path(branch, drop_rate)
    branch = Mlp(int(width * self.mlp_ratio), name="mlp", **kw)(layer_norm(name="norm2", **kw)(x))
    x = x + self._drop_path(branch, drop_rate)
    return nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)

  def _drop_path(self, branch: jax.Array, rate) -> jax.Array:
    # A Python 0.0 (pretraining, or evaluation) adds nothing to the graph.
    if self.deterministic or (isinstance(rate, float) and rate == 0.0):
      return branch
    return drop_path(branch, rate, self.make_rng("dropout"))


REMAT_POLICY_FNS: dict[str, Callable | None] = {
  "full": None,  # save nothing: recompute the whole block in backward
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class ScannedBlock(Block):
  """A Block with the (carry, output) signature that `nn.scan` wants."""

  @nn.compact
  def __call__(self, x, drop_rate):  # pytype: disable=signature-mismatch
    return super().__call__(x, drop_rate), None


class TransformerStack(nn.Module):
  """`depth` blocks, as separate modules (`layer_{i}`) or one scanned module
  (`layers`, parameters stacked on a leading `layers` axis).

  Scanning compiles one block instead of `depth` copies (big models, TPU);
  `mae_jax.model.stacking.stack_layers` / `unstack_layers` convert parameters
  between the two layouts.
  """

  depth: int
  heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  deterministic: bool = True
  remat_policy: str = "none"
  scan: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  attention_impl: str | None = "xla"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Stochastic depth rises linearly over depth, as in the reference.
    rates = [float(r) for r in np.linspace(0.0, self.drop_path_rate, self.depth)]
    block_kw = dict(
      heads=self.heads,
      mlp_ratio=self.mlp_ratio,
      # No dropout RNG is needed when nothing is dropped.
      deterministic=self.deterministic or self.drop_path_rate == 0,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attention_impl=self.attention_impl,
    )
    block_cls = ScannedBlock if self.scan else Block
    if self.remat_policy != "none":
      block_cls = nn.remat(
        block_cls,
        policy=REMAT_POLICY_FNS[self.remat_policy],
        # Under scan, CSE cannot undo the remat, and prevent_cse slows it.
        prevent_cse=not self.scan,
      )
    if self.scan:
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=0,
        length=self.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = stack(name="layers", **block_kw)(x, jnp.asarray(rates, jnp.float32))
      return x
    for i, rate in enumerate(rates):
      x = block_cls(name=f"layer_{i}", **block_kw)(x, rate)
    return x


def normal_init(stddev: float, axes: tuple) -> Callable:
  """Tokens (cls, mask): plain normal(std), not truncated, as the reference."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)
