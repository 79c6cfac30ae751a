"""Pretraining: `pretrain.train_and_evaluate(config, workdir)`, built on mae_jax.core."""
