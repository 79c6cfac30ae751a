"""NVIDIA GPUs described for XLA's GPU compiler, so it compiles without one.

XLA compiles for a GPU it cannot see when it is handed the device's
description (a `stream_executor.GpuTargetConfigProto` in text form, the
`target_config` of `jax.experimental.topologies.get_topology_desc`). This
module holds the facts of each GPU, from NVIDIA's datasheets and what CUDA's
device query reports (compute capability, SMs, memory, bandwidth, caches,
clocks), and writes that description. The dense bf16 peak (no sparsity) is
the denominator of the AOT report's MFU prediction.

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
  memory_bytes: int  # as CUDA reports it (nvidia-smi's MiB)
  memory_bytes_per_second: float
  peak_bf16_flops: float  # dense tensor-core bf16, per GPU
  l2_bytes: int
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int
  boost_clock_ghz: float
  fp32_lanes_per_sm: int


GPUS = {
  # A100 SXM4 80GB: sm_80, 108 SMs, 2039 GB/s HBM2e, 312 TFLOP/s bf16, 40 MB L2.
  "a100-80": GpuSpec(
    "NVIDIA A100-SXM4-80GB", (8, 0), 108, 81920 * MiB, 2039 * GB, 312e12,
    40 * MiB, 164 * 1024, 163 * 1024, 1.41, 64,
  ),
  # H100 SXM5 80GB: sm_90, 132 SMs, 3.35 TB/s HBM3, 989 TFLOP/s bf16, 50 MB L2.
  "h100": GpuSpec(
    "NVIDIA H100 80GB HBM3", (9, 0), 132, 81559 * MiB, 3350 * GB, 989e12,
    50 * MiB, 228 * 1024, 227 * 1024, 1.98, 128,
  ),
  # H200 SXM 141GB: the H100's compute with 4.8 TB/s HBM3e.
  "h200": GpuSpec(
    "NVIDIA H200", (9, 0), 132, 143771 * MiB, 4800 * GB, 989e12,
    50 * MiB, 228 * 1024, 227 * 1024, 1.98, 128,
  ),
  # B200 (HGX): sm_100, 148 SMs, 8 TB/s HBM3e, 2.25 PFLOP/s dense bf16.
  "b200": GpuSpec(
    "NVIDIA B200", (10, 0), 148, 183359 * MiB, 8000 * GB, 2250e12,
    126 * MiB, 228 * 1024, 227 * 1024, 1.965, 128,
  ),
}  # fmt: skip


def target_config(spec: GpuSpec) -> str:
  """The GpuTargetConfigProto text XLA compiles `spec` from. Only what the
  compiler reads to pick tilings and launch shapes; CUDA's fixed limits
  (1024 threads per block, 2048 per SM, 64 K registers) hold on all four."""
  major, minor = spec.compute_capability
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
    f"  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
    'platform_name: "CUDA"\n'
    "dnn_version_info { major: 9 minor: 8 }\n"
    f'device_description_str: "{spec.device_name}"\n'
  )
