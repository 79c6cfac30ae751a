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
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mae_jax.errors import ConfigError

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

  Raises ConfigError (before anything is compiled) when the shape cannot be
  laid over `num_devices`.
  """
  sizes = [int(requested.get(axis, 1)) for axis in MESH_AXES]
  unknown = [i for i, size in enumerate(sizes) if size == -1]
  if len(unknown) > 1 or any(size == 0 or size < -1 for size in sizes):
    raise ConfigError(
      f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be positive, "
      "with at most one -1 (= use the remaining devices)."
    )
  known = math.prod(size for size in sizes if size != -1)
  if unknown:
    if num_devices % known:
      raise ConfigError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes use {known} "
        f"devices, which does not divide the {num_devices} devices present."
      )
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(
      f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices "
      f"but {num_devices} are present: make the product of the mesh sizes equal "
      "the device count (or set one axis to -1)."
    )
  return tuple(sizes)


def make_mesh(requested: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh over `devices` (default: all), laid out along the physical network.

  On a multi-slice TPU job the devices fall into slices joined by the slow
  data-centre network (DCN); the mesh is then a hybrid one whose `data` (and
  if need be `fsdp`) axis runs across slices, see `dcn_shape`.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(requested, len(devices))
  # Auto axes: shardings come from jit in/out shardings and constraints.
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  slices = num_slices(devices)
  if slices == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  dcn = dcn_shape(shape, slices)
  ici = tuple(size // across for size, across in zip(shape, dcn))
  grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def num_slices(devices: Sequence[jax.Device]) -> int:
  """TPU slices among `devices` (1 for CPUs, GPUs and single-slice TPUs)."""
  return len({getattr(device, "slice_index", 0) for device in devices})


def dcn_shape(shape: Sequence[int], slices: int) -> tuple[int, ...]:
  """How many slices each mesh axis spans.

  Only gradient all-reduces (data) and, failing that, weight gathers (fsdp)
  may cross the slow network between slices: `data` takes as many slices as
  divide it, `fsdp` the rest; `tensor` always stays inside a slice.
  """
  sizes = dict(zip(MESH_AXES, shape))
  across_data = math.gcd(sizes["data"], slices)
  across_fsdp = slices // across_data
  if sizes["fsdp"] % across_fsdp:
    raise ConfigError(
      f"mesh {sizes} cannot span {slices} slices: make config.mesh.data (or "
      f"data x fsdp) a multiple of {slices}, so that only data/fsdp traffic "
      "crosses the network between slices."
    )
  return (across_data, across_fsdp, 1)


def rules_from_config(rules: Sequence[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  if not rules:
    return DEFAULT_RULES
  return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def batch_axes(rules: Sequence[tuple[str, Any]]) -> Any:
  """Mesh axes the batch dimension is split over (from 'activation_batch')."""
  return dict(rules).get("activation_batch", ("data", "fsdp"))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes, rest replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(rules)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """Shardings for a tree whose leaves are (possibly) `nn.LogicallyPartitioned`."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)
