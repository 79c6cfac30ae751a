"""TPU slices and GPU hosts, for compiling a pod's program on a CPU machine.

`--topology=v5p:4x4x4` names a chip generation and the slice's shape in
chips. `devices(topology)` returns compile-only devices laid out like that
slice, made by libtpu through `jax.experimental.topologies`; nothing runs on
them, but XLA compiles for them exactly as it would on the pod. `cpu` (or
`cpu:N`) stands for this machine's own (fake) CPU devices, so the same code
path runs without libtpu.

`--topology=h100:8` is one host of 8 H100s, `h100:8x4` four such hosts (also
a100-80, h200, b200: `mae_jax.aot.gpu_targets`). Their compile-only devices come
from jaxlib's CUDA plugin, handed each GPU's description, with no GPU and no
CUDA driver (requirements-gpu-aot.txt).

Chip figures are Google Cloud's public per-chip specifications
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e, /tpu7x): peak bf16 FLOP/s,
HBM capacity (in GiB for every chip) and bandwidth, ICI and DCN bandwidth.
On v4 and v5p one JAX device is one chip (its two TensorCores work as one
"megacore"); on TPU7x (Ironwood) each chip is two JAX devices, one per
TensorCore chiplet (its 2x2x1 slice is 8 devices of kind "TPU7x"), so its
`Chip` describes one device, half a chip. Accelerator types count
TensorCores (v5p-128 and tpu7x-128 are 64 chips, topology 4x4x4), v5e and
v6e types count chips.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys

from mae_jax.aot import gpu_targets
from mae_jax.errors import UsageError

GiB = 1024**3
GB = 1000**3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  peak_bf16_flops: float  # per chip, per second
  hbm_bytes_per_second: float
  dims: int  # 3: v4/v5p 3-D torus; 2: v5e/v6e 2-D torus
  cores_per_chip: int  # how accelerator types count (v5p-8 = 4 chips)
  chip_config: str  # libtpu's name for one JAX device per chip
  # What a collective's ring gets per chip, one direction: inside a slice
  # (ICI) or a GPU host (NVLink), and between slices (DCN) or hosts.
  near_bytes_per_second: float = 0.0
  far_bytes_per_second: float = 0.0
  near_link: str = "ICI"
  far_link: str = "DCN"
  gpu: gpu_targets.GpuSpec | None = None  # set for NVIDIA GPUs
  devices_per_chip: int = 1  # TPU7x: 2, and the figures above are per device


def _tpu(
  name, hbm_gib, peak, hbm_gbps, dims, cores, config, ici_bidirectional_gbps, dcn_gbit, split=1
):
  """A TPU chip from Google's per-chip table, as one JAX device (`split`
  devices per chip share its figures evenly). A ring along one torus axis
  uses that axis's two links of the chip's 2 x dims, each way: per
  direction ICI x 2 / (2 x 2 x dims). DCN is per chip, in Gbit/s."""
  ring = ici_bidirectional_gbps * GB * 2 / (4 * dims)
  return Chip(
    name,
    hbm_gib * GiB // split,
    peak / split,
    hbm_gbps * GB / split,
    dims,
    cores,
    config,
    ring / split,
    dcn_gbit * GB / 8 / split,
    devices_per_chip=split,
  )


# HBM in GiB for every chip (what XLA reports usable is a little less: 15.75
# of v5e's 16). ICI is the bidirectional bandwidth per chip; DCN per chip.
CHIPS = {
  # v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, 6 ICI ports (2400 Gbit/s
  # each way: 600 GB/s both ways); DCN assumed as v5p's 50 Gbit/s per chip.
  "v4": _tpu("v4", 32, 275e12, 1200, 3, 2, "megacore", 600, 50),
  # v5e: 197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s, 400 GB/s ICI (4 ports),
  # 2 x 100 Gbit/s NICs per 8-chip host: 25 Gbit/s per chip.
  "v5e": _tpu("v5e", 16, 197e12, 819, 2, 1, "default", 400, 25),
  # v5p: 459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, 1200 GB/s ICI (6
  # ports), 50 Gbit/s DCN per chip.
  "v5p": _tpu("v5p", 95, 459e12, 2765, 3, 2, "megacore", 1200, 50),
  # v6e (Trillium): 918 TFLOP/s bf16, 32 GiB HBM at 1638 GB/s, 800 GB/s ICI
  # (4 ports); DCN assumed as v5e's 25 Gbit/s per chip.
  "v6e": _tpu("v6e", 32, 918e12, 1638, 2, 1, "default", 800, 25),
  # TPU7x (Ironwood): 2307 TFLOP/s bf16, 192 GiB HBM at 7380 GB/s, 1200 GB/s
  # ICI on a 3-D torus, 100 Gbit/s DCN per chip; two devices per chip (one
  # per TensorCore chiplet), each given half of every figure. How the two
  # chiplets share the chip's links is not public: half each is assumed.
  "tpu7x": _tpu("tpu7x", 192, 2307e12, 7380, 3, 2, "default", 1200, 100, split=2),
}
# GPUs: a topology is GPUS_PER_HOST[xHOSTS] (dims 2: the second may be left out).
GPU_CHIPS = {
  name: Chip(
    name,
    spec.memory_bytes,
    spec.peak_bf16_flops,
    spec.memory_bytes_per_second,
    2,
    1,
    "",
    spec.nvlink_bytes_per_second,
    spec.network_bytes_per_second,
    "NVLink",
    "network",
    spec,
  )
  for name, spec in gpu_targets.GPUS.items()
}


# What jax's device_kind says on each chip this module knows.
TPU_DEVICE_KINDS = {
  "TPU v4": "v4",
  "TPU v5 lite": "v5e",
  "TPU v5": "v5p",
  "TPU v6 lite": "v6e",
  "TPU7x": "tpu7x",
}


def chip_of_device_kind(kind: str) -> Chip | None:
  """The chip a real device is (its exact device_kind), or None if unknown."""
  kind = kind.strip()
  if kind in TPU_DEVICE_KINDS:
    return CHIPS[TPU_DEVICE_KINDS[kind]]
  return next((chip for chip in GPU_CHIPS.values() if chip.gpu.device_name == kind), None)


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice shape (times `num_slices`), or this machine's CPU devices."""

  chip: Chip | None  # None: local CPU devices
  shape: tuple[int, ...]  # chips per slice along each torus axis
  num_slices: int = 1

  @property
  def chips(self) -> int:
    return math.prod(self.shape) * self.num_slices

  @property
  def device_noun(self) -> str:
    """What one JAX device of this topology is, in the report."""
    if self.chip is not None and self.chip.gpu:
      return "GPUs"
    if self.chip is not None and self.chip.devices_per_chip > 1:
      return f"devices ({self.chip.devices_per_chip} per chip)"
    return "chips"

  @property
  def hosts(self) -> int | None:
    """GPU hosts (gpus_per_host x hosts); None for TPU slices, whose hosts
    libtpu lays out."""
    return self.shape[1] if self.chip is not None and self.chip.gpu else None

  @property
  def name(self) -> str:
    if self.chip is None:
      return f"cpu:{self.shape[0]}"
    shape = "x".join(map(str, self.shape))
    if self.chip.gpu and self.shape[1] == 1:
      shape = str(self.shape[0])
    slices = f" x {self.num_slices} slices" if self.num_slices > 1 else ""
    return f"{self.chip.name}:{shape}{slices}"

  @property
  def accelerator_type(self) -> str:
    """gcloud's --accelerator-type for one slice (v5e is 'v5litepod')."""
    if self.chip is None:
      return "cpu"
    if self.chip.gpu:
      per_host, hosts = self.shape
      return f"{hosts} host{'s' if hosts > 1 else ''} x {per_host} {self.chip.gpu.device_name}"
    family = "v5litepod" if self.chip.name == "v5e" else self.chip.name
    return f"{family}-{math.prod(self.shape) * self.chip.cores_per_chip}"


def parse(text: str, num_slices: int = 1) -> Topology:
  """'v5p:4x4x4' -> Topology; 'cpu' or 'cpu:N' -> the local CPU devices.

  Raises UsageError naming the accepted forms.
  """
  if not isinstance(num_slices, int) or num_slices < 1:
    raise UsageError(f"--num_slices={num_slices!r}: must be an integer >= 1.")
  name, _, shape_text = text.strip().lower().partition(":")
  if name == "cpu":
    count = _positive_int(shape_text, text) if shape_text else None
    if num_slices != 1:
      raise UsageError("--num_slices needs a TPU topology; cpu has one 'slice'.")
    return Topology(None, (count or _local_device_count(),))
  if name in GPU_CHIPS:
    parts = shape_text.split("x") if shape_text else []
    if len(parts) not in (1, 2) or num_slices != 1:
      raise UsageError(
        f"--topology={text!r}: GPUs are GPUS_PER_HOST or GPUS_PER_HOSTxHOSTS, "
        f"e.g. {name}:8 (one host) or {name}:8x4 (4 hosts); no --num_slices."
      )
    per_host, hosts = (_positive_int(p, text) for p in (parts + ["1"])[:2])
    return Topology(GPU_CHIPS[name], (per_host, hosts))
  if name not in CHIPS:
    raise UsageError(
      f"--topology={text!r}: unknown chip {name!r}; use one of {sorted(CHIPS)} "
      "followed by the slice shape in chips, e.g. v5p:4x4x4, v5e:8x8, one of "
      f"the GPUs {sorted(GPU_CHIPS)} followed by GPUs per host, e.g. h100:8 or "
      "h100:8x4 (4 hosts), or 'cpu'."
    )
  chip = CHIPS[name]
  parts = shape_text.split("x") if shape_text else []
  if len(parts) != chip.dims:
    raise UsageError(
      f"--topology={text!r}: {name} slices have {chip.dims} axes, e.g. "
      f"{name}:{'x'.join(['4'] * chip.dims)}."
    )
  return Topology(chip, tuple(_positive_int(p, text) for p in parts), num_slices)


def _positive_int(part: str, text: str) -> int:
  if not part.isdigit() or int(part) < 1:
    raise UsageError(f"--topology={text!r}: {part!r} is not a positive integer.")
  return int(part)


def _local_device_count() -> int:
  import jax

  return jax.device_count()


def devices(topology: Topology) -> list:
  """Devices to build the mesh from and compile for."""
  import jax

  if topology.chip is None:
    local = jax.devices()
    if topology.shape[0] > len(local):
      raise UsageError(
        f"--topology=cpu:{topology.shape[0]}: only {len(local)} CPU devices here "
        "(set XLA_FLAGS=--xla_force_host_platform_device_count=N for more)."
      )
    return local[: topology.shape[0]]
  from jax.experimental import topologies as jax_topologies

  if topology.chip.gpu:
    return _gpu_devices(topology, jax_topologies)
  _point_jax_at_libtpu(topology)
  chip = topology.chip
  shape = topology.shape + (1,) * (3 - len(topology.shape))
  # Hosts own 2x2 chips, except small slices that fit on one host.
  one_host = math.prod(shape) <= 4 or (chip.dims == 2 and math.prod(shape) <= 8)
  host_bounds = shape if one_host else tuple(min(s, b) for s, b in zip(shape, (2, 2, 1)))
  try:
    description = jax_topologies.get_topology_desc(
      f"{chip.name}:{'x'.join(map(str, topology.shape))}",
      "tpu",
      chip_config_name=chip.chip_config,
      chips_per_host_bounds=host_bounds,
      num_slices=topology.num_slices,
    )
  except Exception as error:  # libtpu's errors are JaxRuntimeError strings
    raise UsageError(f"libtpu cannot make topology {topology.name}: {error}") from error
  return list(description.devices)


LIBTPU_HINT = (
  ".venv/bin/pip install --no-deps --target .venv/libtpu-aot -r "
  "requirements-tpu-aot.txt (kept out of site-packages: an importable "
  "libtpu makes every JAX program probe for TPUs), or set "
  "TPU_LIBRARY_PATH=/path/to/libtpu.so"
)


def libtpu_path() -> str | None:
  """TPU_LIBRARY_PATH, else an importable libtpu, else <venv>/libtpu-aot."""
  from_env = os.environ.get("TPU_LIBRARY_PATH")
  if from_env:
    return from_env if os.path.isfile(from_env) else None
  try:
    import libtpu  # installed with jax[tpu], e.g. on a TPU VM

    return libtpu.get_library_path()
  except ImportError:
    pass
  beside_venv = os.path.join(sys.prefix, "libtpu-aot", "libtpu", "libtpu.so")
  return beside_venv if os.path.isfile(beside_venv) else None


def _point_jax_at_libtpu(topology: Topology) -> None:
  path = libtpu_path()
  if path is None:
    raise UsageError(f"compiling for a TPU topology needs libtpu: {LIBTPU_HINT}.")
  os.environ["TPU_LIBRARY_PATH"] = path
  # On load libtpu describes the TPU VM it runs on, asking the GCE metadata
  # server and logging errors when there is none. Describe worker 0 of the
  # requested slice instead; the compile-only topology itself is explicit.
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")
  # libtpu locks /tmp/libtpu_lockfile so that one process owns the TPU;
  # compiling touches no TPU, so several AOT checks may run side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _find_cudnn() -> None:
  """JAX looks for the plugin's cuDNN bindings once, when it is imported,
  which is before the plugin directory joins sys.path here: look again, so
  that attention_impl=cudnn lowers where the cuDNN wheel is installed."""
  try:
    from jax._src.cudnn import fused_attention_stablehlo
  except ImportError:
    return
  if fused_attention_stablehlo.cuda_versions is not None:
    return
  try:
    import importlib

    versions = importlib.import_module("jax_cuda13_plugin._versions")
  except ImportError:
    return
  fused_attention_stablehlo.cuda_versions = versions


GPU_PLUGIN_HINT = (
  ".venv/bin/pip install --no-deps --target .venv/gpu-aot -r requirements-gpu-aot.txt "
  "(bash setup.sh --test does it; kept out of site-packages so that CPU runs "
  "never probe for a GPU)"
)


def gpu_plugin_dir() -> str | None:
  """<venv>/gpu-aot when it holds the CUDA plugin, else None (then an
  installed jax[cuda13], e.g. on a GPU machine, is used as it is)."""
  beside_venv = os.path.join(sys.prefix, "gpu-aot")
  plugin = os.path.join(beside_venv, "jax_plugins", "xla_cuda13")
  return beside_venv if os.path.isdir(plugin) else None


def _gpu_devices(topology: Topology, jax_topologies) -> list:
  plugin_dir = gpu_plugin_dir()
  if plugin_dir and plugin_dir not in sys.path:
    # JAX finds PJRT plugins in the jax_plugins namespace package on sys.path
    # when a platform is first asked for; ptxas comes from nvidia/cuda_nvcc.
    sys.path.append(plugin_dir)
  # The plugin checks the local CUDA driver and libraries at load; there are
  # none on a CPU machine and compiling needs neither.
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  _find_cudnn()
  per_host, hosts = topology.shape
  try:
    description = jax_topologies.get_topology_desc(
      platform="cuda",
      target_config=gpu_targets.target_config(topology.chip.gpu),
      topology=f"1x{hosts}x{per_host}",
    )
  except Exception as error:
    text = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
    raise UsageError(
      f"cannot make GPU topology {topology.name} ({text}); it needs jaxlib's CUDA "
      f"plugin: {GPU_PLUGIN_HINT}."
    ) from error
  return list(description.devices)
