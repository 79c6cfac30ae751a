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
total CUDA reports (XLA_CLIENT_MEM_FRACTION, or its deprecated name
XLA_PYTHON_CLIENT_MEM_FRACTION; default 75 %). The evaluation programs the
run compiles besides its step are planned too (`evaluations.py`); a k-NN
config has only those.

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
  FLOPs of loops  XLA counts a loop body once: a step with scan_layers or
             accumulation is counted on its unrolled twin (`loop_free_cost`).
  collectives  read off the compiled HLO (`collectives.py`): bytes per
             device (ring algorithms), the link each crosses (NVLink or the
             network between GPU hosts; ICI or DCN between TPU slices) and
             its time at that link's bandwidth.
  step time  XLA:TPU's cost model ("optimal_seconds") when it gives a
             positive one (not always: -425 s for ViT-B on v5e); otherwise a
             per-chip roofline (`roofline.py`): the largest of compiled
             FLOPs / the peak of the dtype that runs (bf16; TF32, half of
             it, for float32 on GPUs), "bytes accessed" / HBM bandwidth, and
             the collective time. Latency and overlap are not modelled:
             treat the step time as optimistic and the MFU as a plan-level
             estimate, not a measurement.

The package's modules are in docs/architecture.md's map.
"""

# Imported when first used, so that `mae_jax.aot.roofline` and
# `mae_jax.aot.topologies` load without the planner (which imports the
# jobs, their data and configs): the accelerator check uses them alone.
_EXPORTS = {
  "EXIT_BAD_INPUT": "planner",
  "EXIT_DOES_NOT_FIT": "planner",
  "Report": "planner",
  "check_plan": "planner",
  "plan_without_data": "planner",
  "step_program": "planner",
  "format_report": "report",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'mae_jax.aot' has no attribute {name!r}")
  import importlib

  return getattr(importlib.import_module(f"mae_jax.aot.{_EXPORTS[name]}"), name)
