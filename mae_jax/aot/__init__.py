r"""Will this run fit that pod or those GPUs? Compile the real train step here.

  python -m mae_jax.aot --config=configs/pretrain.py:vit_huge --topology=v5p:4x4x8 \
      --config.model.dtype=bfloat16 --config.mesh.data=1 --config.mesh.fsdp=-1

builds the job's sharded train step exactly as the job does (the job
table's own builder: same plan checks, mesh, state shardings and jitted
step; pretraining, the linear probe and fine-tuning), compiles it with
libtpu for compile-only devices laid out like the pod
(`mae_jax.aot.topologies`), and prints per-chip memory against the chip's HBM,
FLOPs per step, an estimated step time and the implied MFU. No TPU and no
dataset is needed: ImageNet-1k's and the bundled digits' sizes are known
(`planner.KNOWN_DATASETS`); other datasets need --config.num_train_steps.
`--topology=cpu` compiles for this machine's CPU devices instead.
`--topology=h100:8` (8 GPUs on one host) or `h100:8x4` (4 hosts) compiles
for NVIDIA GPUs (a100-80, h100, h200, b200) with jaxlib's CUDA plugin and no
GPU (requirements-gpu-aot.txt); memory is checked against JAX's share of the
GPU (XLA_PYTHON_CLIENT_MEM_FRACTION, default 75 %).

Exit status: 0 the plan fits; 1 it does not (the message names the knobs to
turn); 2 bad input, reported before anything compiles.

Where the numbers come from:
  memory     `compiled.memory_analysis()`, per chip: arguments (the train
             state shard and the batch shard), temporaries (activations,
             gradients, collectives' buffers), outputs not aliased to the
             donated arguments, and the program itself. A plan the compiler
             cannot place in HBM fails to compile; that failure is reported
             as "does not fit" with the compiler's own numbers.
  FLOPs      `compiled.cost_analysis()["flops"]` (on GPUs, which give none,
             XLA's HLO cost analysis of the compiled module) is per chip, counts what the
             compiled program executes (remat recomputation included);
             "model FLOPs" is the textbook count of the MAE's matmuls and
             attention (forward x 3), the numerator of MFU.
  step time  XLA:TPU's cost model ("optimal_seconds") when it gives a
             positive one (not always: -425 s for ViT-B on v5e); otherwise a
             per-chip roofline: the larger of compiled FLOPs / peak bf16
             FLOP/s and the compiler's "bytes accessed" / HBM bandwidth.
             Communication and its overlap are not modelled: treat the step
             time as optimistic and the MFU as a plan-level estimate, not a
             measurement.

The package: `planner.py` builds the job's step program (the job table's
own builder) for compile-only devices and reads the compiled program;
`topologies.py` and `gpu_targets.py` hold the TPU slices and GPUs as data;
`report.py` prints the plan; `cli.py` is `python -m mae_jax.aot`.
"""

from mae_jax.aot.planner import (
  EXIT_BAD_INPUT,
  EXIT_DOES_NOT_FIT,
  Report,
  check_plan,
  plan_without_data,
  step_program,
)
from mae_jax.aot.report import format_report

__all__ = [
  "EXIT_BAD_INPUT",
  "EXIT_DOES_NOT_FIT",
  "Report",
  "check_plan",
  "format_report",
  "plan_without_data",
  "step_program",
]
