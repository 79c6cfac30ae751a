"""Evaluators: what a job measures of its model while and after it trains.

One interface: an evaluator is built once from the job's pieces (its config,
mesh, batch sharding, model or step program) and is then a function
`params or state -> {metric: value}`, run by the step loop as a periodic
hook (`mae_jax.core.loop.Periodic`, every `config.eval_every_steps` or
`config.knn_every_steps` steps, and after the last) or once by a job:

  reconstruction.py  the MAE's loss on held-out images with fixed masks, and
                     reconstructions.png (pretraining)
  knn.py             weighted k-NN on frozen features: pretraining's monitor
                     and the k-NN job are this one evaluator
  accuracy.py        top-1 / top-5 and loss of a classifier's logits (the
                     linear probe, fine-tuning); the sums k-NN reuses

A new evaluator is one file here, and a line in the job that runs it.
"""
