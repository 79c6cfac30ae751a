"""`python -m mae_jax.aot --config=... --topology=...`: see mae_jax.aot."""

from mae_jax.aot.cli import run_cli

run_cli()
