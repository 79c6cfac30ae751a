"""NVIDIA GPUs described for XLA's GPU compiler, so it compiles without one.

XLA compiles for a GPU it cannot see when it is handed the device's
description (a `stream_executor.GpuTargetConfigProto` in text form, the
`target_config` of `jax.experimental.topologies.get_topology_desc`). This
module holds the facts of each GPU, from NVIDIA's datasheets and what CUDA's
device query reports (compute capability, SMs, memory, bandwidth, caches,
clocks), and writes that description. The dense bf16 peak (no sparsity) is
the denominator of the AOT report's MFU prediction.

Memory is the total CUDA reports (`cudaMemGetInfo`, what XLA sizes its pool
from), not nvidia-smi's MiB figure, which is 0.5-0.75 GiB more. The compute
capability is what XLA's device description says: Hopper and Blackwell
report the accelerated-features variants, 9.0a and 10.0a (`sm_90a` code).
The links are what a collective crosses: NVLink between the GPUs of a host
(per direction), the network between hosts (per GPU, one NIC each).

The GPU compiler itself comes from the CUDA plugin of jaxlib
(requirements-gpu-aot.txt), with ptxas from NVIDIA's nvcc wheel.
"""

from __future__ import annotations

import dataclasses

MiB = 1024**2
GB = 1000**3


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  device_name: str  # what CUDA calls it (jax's device_kind)
  compute_capability: tuple[int, int]
  sms: int
  memory_bytes: int  # the total CUDA reports (cudaMemGetInfo)
  memory_source: str  # where memory_bytes comes from
  memory_bytes_per_second: float
  peak_bf16_flops: float  # dense tensor-core bf16, per GPU
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int
  boost_clock_ghz: float
  fp32_lanes_per_sm: int
  nvlink_bytes_per_second: float  # per GPU, one direction
  network_bytes_per_second: float  # per GPU between hosts (one NIC per GPU)


# What the CUDA totals come from. XLA's published device descriptions
# (its gpu_specs) hold the A100's and B200's; the H100's was read off an H100
# 80GB HBM3; for the H200 none is published here: nvidia-smi's total less
# the H100's difference between the two (551 MiB), to be replaced by the
# figure `benchmarks/accelerator_check.py` prints on a real H200.
XLA_SPEC = "CUDA's total, from XLA's device description of this GPU"
READ_ON_H100 = "CUDA's total, read on an H100 80GB HBM3"
ESTIMATED = "estimated: nvidia-smi's 143,771 MiB less the H100's 551 MiB (not read on an H200)"


GPUS = {
  # A100 SXM4 80GB: sm_80, 108 SMs, 2039 GB/s HBM2e, 312 TFLOP/s bf16, 40 MB
  # L2; NVLink 3 600 GB/s both ways, HDR InfiniBand 200 Gb/s per GPU.
  "a100-80": GpuSpec(
    "NVIDIA A100-SXM4-80GB", (8, 0), 108, 85_100_068_864, XLA_SPEC, 2039 * GB, 312e12,
    40 * MiB, 164 * 1024, 163 * 1024, 1.41, 64, 300 * GB, 25 * GB,
  ),
  # H100 SXM5 80GB: sm_90a, 132 SMs, 3.35 TB/s HBM3, 989 TFLOP/s bf16, 50 MB
  # L2; NVLink 4 900 GB/s both ways, NDR InfiniBand 400 Gb/s per GPU.
  "h100": GpuSpec(
    "NVIDIA H100 80GB HBM3", (9, 0), 132, 84_942_979_072, READ_ON_H100, 3350 * GB, 989e12,
    50 * MiB, 228 * 1024, 227 * 1024, 1.98, 128, 450 * GB, 50 * GB,
  ),
  # H200 SXM 141GB: the H100's compute and links with 4.8 TB/s HBM3e.
  "h200": GpuSpec(
    "NVIDIA H200", (9, 0), 132, 143771 * MiB - 577_830_912, ESTIMATED, 4800 * GB, 989e12,
    50 * MiB, 228 * 1024, 227 * 1024, 1.98, 128, 450 * GB, 50 * GB,
  ),
  # B200 (HGX): sm_100a, 148 SMs, 8 TB/s HBM3e, 2.25 PFLOP/s dense bf16;
  # NVLink 5 1.8 TB/s both ways, 400 Gb/s per GPU.
  "b200": GpuSpec(
    "NVIDIA B200", (10, 0), 148, 191_514_673_152, XLA_SPEC, 8000 * GB, 2250e12,
    126 * MiB, 228 * 1024, 227 * 1024, 1.965, 128, 900 * GB, 50 * GB,
  ),
}  # fmt: skip

# Hopper (9.0) and Blackwell (10.0) devices describe themselves with the
# accelerated-features extension (9.0a, 10.0a): code for wgmma/tcgen05.
ACCELERATED_FEATURES = {(9, 0), (10, 0)}


def compute_capability_text(spec: GpuSpec) -> str:
  """'9.0a' style, as XLA names the target."""
  major, minor = spec.compute_capability
  suffix = "a" if spec.compute_capability in ACCELERATED_FEATURES else ""
  return f"{major}.{minor}{suffix}"


def target_config(spec: GpuSpec) -> str:
  """The GpuTargetConfigProto text XLA compiles `spec` from. Only what the
  compiler reads to pick tilings and launch shapes; CUDA's fixed limits
  (1024 threads per block, 2048 per SM, 64 K registers) hold on all four."""
  major, minor = spec.compute_capability
  extension = ""
  if spec.compute_capability in ACCELERATED_FEATURES:
    extension = " feature_extension: ACCELERATED_FEATURES"
  fields = {
    "threads_per_block_limit": 1024,
    "threads_per_warp": 32,
    "shared_memory_per_block": 48 * 1024,
    "shared_memory_per_core": spec.shared_memory_per_sm,
    "shared_memory_per_block_optin": spec.shared_memory_per_block_optin,
    "threads_per_core_limit": 2048,
    "core_count": spec.sms,
    "fpus_per_core": spec.fp32_lanes_per_sm,
    "block_dim_limit_x": 2**31 - 1,
    "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535,
    "memory_bandwidth": int(spec.memory_bytes_per_second),
    "l2_cache_size": spec.l2_bytes,
    "clock_rate_ghz": spec.boost_clock_ghz,
    "device_memory_size": spec.memory_bytes,
    "registers_per_core_limit": 65536,
    "registers_per_block_limit": 65536,
  }
  body = "\n".join(f"  {name}: {value}" for name, value in fields.items())
  return (
    f"gpu_device_info {{\n{body}\n"
    f"  cuda_compute_capability {{ major: {major} minor: {minor}{extension} }}\n}}\n"
    'platform_name: "CUDA"\n'
    "dnn_version_info { major: 9 minor: 8 }\n"
    f'device_description_str: "{spec.device_name}"\n'
  )
