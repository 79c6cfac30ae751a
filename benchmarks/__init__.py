"""Benchmark harness for mae_jax (not tests: nothing here asserts a speed).

  python -m benchmarks.run standard          # the standard set -> BENCHMARKS.md
  python -m benchmarks.run step --preset B/16 --batch 8 --torch
  python -m benchmarks.accelerator_check     # on a GPU machine

See benchmarks/README.md.
"""
