"""Evaluators: what a job measures of its model while and after it trains.

One interface: an evaluator is built once from the job's pieces (its config,
mesh, batch sharding, model or step program) and is then a function
`params or state -> {metric: value}`, run by the step loop as a periodic
hook (`mae_jax.core.loop.Periodic`, every `config.eval_every_steps` or
`config.knn_every_steps` steps, and after the last) or once by a job.

They are the reconstruction loss and picture (pretraining), the weighted
k-NN (pretraining's monitor and the k-NN job are one evaluator), and a
classifier's accuracy (the probe, fine-tuning); the module map is
docs/architecture.md.

A new evaluator is one file here, and a line in the job that runs it.
"""
