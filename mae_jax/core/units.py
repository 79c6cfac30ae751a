"""Units in reports (the AOT pod plan, the benchmarks). Plain Python: no jax."""

from __future__ import annotations


def gib(value: float | None) -> str:
  """Bytes as GiB with two decimals; "n/a" for an unknown size."""
  return "n/a" if value is None else f"{value / 2**30:.2f} GiB"
