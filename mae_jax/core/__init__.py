"""What every job shares: the step engine (`train_step`), the step loop,
state and shardings, the plan, checkpoints, the workdir and its lease.
Its modules are listed in docs/architecture.md, the one module map.
"""
