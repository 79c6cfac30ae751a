"""k-NN classification of frozen features: a cheap monitor of an encoder.

As customary for self-supervised encoders (the weighted k-NN of Wu et al.
2018, as used by DINO): features are L2-normalised, each held-out image
takes its k most cosine-similar training images, and each neighbour votes
for its class with weight exp(similarity / temperature). Defaults k = 20,
temperature 0.07.

`knn_evaluator` is the whole protocol as an evaluator (encoder params ->
metrics): pretraining runs it periodically on its own encoder, the k-NN job
once on a restored one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mae_jax.core import batches as batches_lib
from mae_jax.core.pixels import PixelNormalization, on_pixels
from mae_jax.evaluators import accuracy
from mae_jax.model.features import frozen_features


def knn_scores(
  train_features: jax.Array,
  train_labels: jax.Array,
  query: jax.Array,
  *,
  num_classes: int,
  k: int,
  temperature: float,
) -> jax.Array:
  """(Q, num_classes) vote totals for `query` against the (N, D) training bank."""
  bank = train_features / jnp.linalg.norm(train_features, axis=-1, keepdims=True).clip(1e-12)
  query = query / jnp.linalg.norm(query, axis=-1, keepdims=True).clip(1e-12)
  similarity, index = jax.lax.top_k(query @ bank.T, min(k, bank.shape[0]))
  votes = (
    jax.nn.one_hot(train_labels[index], num_classes) * jnp.exp(similarity / temperature)[..., None]
  )
  return votes.sum(axis=1)


# Module-level, so repeated calls (the pretraining monitor) reuse the compilation.
knn_scores_jit = jax.jit(knn_scores, static_argnames=("num_classes", "k", "temperature"))


def knn_classify(
  train_features: np.ndarray,
  train_labels: np.ndarray,
  eval_features: np.ndarray,
  eval_labels: np.ndarray,
  *,
  num_classes: int,
  k: int = 20,
  temperature: float = 0.07,
  chunk: int = 1024,
) -> dict:
  """Top-1 / top-5 (percent, top-5 when there are more than 5 classes)."""
  bank, bank_labels = jnp.asarray(train_features, jnp.float32), jnp.asarray(train_labels)
  sums = {"correct1": 0.0, "correct5": 0.0, "loss_sum": 0.0, "count": 0.0}
  for start in range(0, len(eval_features), chunk):
    query = jnp.asarray(eval_features[start : start + chunk], jnp.float32)
    labels = jnp.asarray(eval_labels[start : start + chunk])
    scores = knn_scores_jit(
      bank, bank_labels, query, num_classes=num_classes, k=k, temperature=temperature
    )
    # The vote shares as probabilities give a (not very meaningful) loss; kept
    # only so accuracy_sums serves every protocol.
    chunk_sums = accuracy.accuracy_sums(
      jnp.log(scores + 1e-12), labels, jnp.ones(labels.shape, jnp.float32)
    )
    sums = {key: sums[key] + float(chunk_sums[key]) for key in sums}
  metrics = accuracy.accuracy_metrics(sums, num_classes, prefix="knn_")
  metrics.pop("knn_loss")
  return metrics


def knn_evaluator(
  plan, mesh, batch_sharding, *, features_fn: Callable, batch_size: int
) -> Callable[[Any], dict]:
  """encoder_params -> {"knn_top1", "knn_top5"}: the k-NN of the data's
  train split (eval transform; the first `plan.knn.train_batches` batches,
  -1 = all) against its eval split, on `features_fn(params, uint8
  images)`. Pretraining's periodic monitor and the k-NN job are this one
  evaluator (`monitor_features` gives the monitor's feature)."""
  inputs, knn, num_classes = plan.inputs, plan.knn, plan.num_classes

  def evaluate(encoder_params) -> dict:
    def split(name: str):
      return batches_lib.split_batches(inputs, name, batch_size, batch_sharding, num_classes)

    train = split(inputs.data.train_split)
    if knn.train_batches >= 0:
      train = (batch for _, batch in zip(range(knn.train_batches), train))
    train_x, train_y = batches_lib.extract_features(features_fn, encoder_params, train, mesh)
    eval_x, eval_y = batches_lib.extract_features(
      features_fn, encoder_params, split(inputs.data.eval_split), mesh
    )
    return knn_classify(
      train_x,
      train_y,
      eval_x,
      eval_y,
      num_classes=num_classes,
      k=knn.k,
      temperature=knn.temperature,
    )

  return evaluate


def monitor_features(plan) -> Callable:
  """The pretraining monitor's feature (`plan.knn.feature`) of the MAE
  encoder (its fixed sin-cos table), on the pipeline's uint8 images."""
  return on_pixels(
    frozen_features(plan.model, plan.knn.feature), PixelNormalization.of(plan.inputs.data)
  )
