"""Device mesh and logical-axis rules: how arrays are laid over devices.

The model names the axes of every parameter and activation ("embed", "mlp",
"activation_batch", ...). The config holds the mesh shape over the axes
(data, fsdp, tensor) and the rules that map logical names onto them, so a
new parallelism layout is a config change:

  data    pure data parallelism: the batch is split, parameters replicated.
  fsdp    the batch is split *and* parameters/optimizer state are sharded
          (ZeRO-3 style); XLA all-gathers each weight when it is used.
  tensor  heads and MLP hidden units are split (Megatron style).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. Names absent here are replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("embed", "fsdp"),
    ("decoder_embed", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("patch", None),
    ("norm", None),
    ("layers", None),
)


def mesh_shape(requested: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry to fill the devices; checks the product.

  Raises ValueError (before anything is compiled) when the shape cannot be
  laid over `num_devices`.
  """
  sizes = [int(requested.get(axis, 1)) for axis in MESH_AXES]
  unknown = [i for i, size in enumerate(sizes) if size == -1]
  if len(unknown) > 1 or any(size == 0 or size < -1 for size in sizes):
    raise ValueError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be positive, "
        "with at most one -1 (= use the remaining devices).")
  known = math.prod(size for size in sizes if size != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(
          f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes use {known} "
          f"devices, which does not divide the {num_devices} devices present.")
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices "
        f"but {num_devices} are present: make the product of the mesh sizes equal "
        "the device count (or set one axis to -1).")
  return tuple(sizes)


def make_mesh(requested: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(requested, len(devices))
  # Auto axes: shardings come from jit in/out shardings and constraints.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  if not rules:
    return DEFAULT_RULES
  return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in rules)


def batch_axes(rules: Sequence[tuple[str, Any]]) -> Any:
  """Mesh axes the batch dimension is split over (from 'activation_batch')."""
  return dict(rules).get("activation_batch", ("data", "fsdp"))


def data_parallel_size(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> int:
  axes = batch_axes(rules)
  axes = (axes,) if isinstance(axes, str) else (axes or ())
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes, rest replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """Shardings for a tree whose leaves are (possibly) `nn.LogicallyPartitioned`."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)
