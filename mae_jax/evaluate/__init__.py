"""The evaluation jobs' pieces: their plan and checks, the frozen feature
source, the probe head and classifier, LARS, layer-wise decay, Mixup and
erasing. The jobs themselves are in `mae_jax.jobs`; the module map is
docs/architecture.md.
"""
