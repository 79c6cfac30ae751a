"""The evaluation optimizers against the reference's rules, on tiny trees.

LARS (reference util/lars.py) by hand in numpy; layer-wise lr decay
(reference util/lr_decay.py) scales and weight-decay groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax.evaluate.lars import lars
from mae_jax.evaluate.layer_decay import decay_mask, finetune_adamw, layer_scales
from mae_jax.evaluate.models import ViTClassifier
from mae_jax.model.config import ModelConfig


def reference_lars_step(p, g, mu, lr, *, momentum, trust, weight_decay):
  """One step of the reference LARS for one tensor, written out."""
  d = g
  if p.ndim > 1:
    d = d + weight_decay * p
    param_norm, update_norm = np.linalg.norm(p), np.linalg.norm(d)
    q = trust * param_norm / update_norm if param_norm > 0 and update_norm > 0 else 1.0
    d = d * q
  mu = momentum * mu + d
  return p - lr * mu, mu


def test_lars_matches_the_reference_update():
  rng = np.random.default_rng(0)
  params = {
    "kernel": rng.normal(size=(4, 3)),
    "bias": rng.normal(size=(3,)),
    "zero_kernel": np.zeros((2, 2)),
  }
  params = jax.tree.map(lambda x: x.astype(np.float32), params)
  lrs = [0.5, 2.0, 1.0]
  tx = lars(
    lambda step: jnp.asarray(lrs)[step], momentum=0.9, trust_coefficient=0.001, weight_decay=0.1
  )
  state = tx.init(params)
  expected = jax.tree.map(np.asarray, params)
  momenta = jax.tree.map(np.zeros_like, expected)
  current = params
  for step, lr in enumerate(lrs):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
    for name in params:
      expected[name], momenta[name] = reference_lars_step(
        expected[name],
        np.asarray(grads[name]),
        momenta[name],
        lr,
        momentum=0.9,
        trust=0.001,
        weight_decay=0.1,
      )
  for name in params:
    np.testing.assert_allclose(current[name], expected[name], rtol=1e-5, atol=1e-7, err_msg=name)
  # A zero matrix has no trust ratio (1) and moves by the raw gradient step.
  assert np.abs(np.asarray(current["zero_kernel"])).max() > 0


def tiny_classifier_params(scan: bool):
  config = ModelConfig(
    image_size=8,
    patch_size=4,
    channels=1,
    width=8,
    depth=3,
    heads=2,
    decoder_width=8,
    decoder_depth=1,
    decoder_heads=2,
    scan_layers=scan,
  )
  model = ViTClassifier(config, num_classes=5)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  import flax.linen as nn

  return nn.unbox(variables["params"])


def test_layer_decay_assigns_the_reference_scales():
  """depth 3: num_layers = 4; patch embed / cls layer 0 -> d**4, block i -> d**(3 - i),
  fc_norm and head -> 1 (the reference's layer_scales list)."""
  d = 0.65
  scales = layer_scales(tiny_classifier_params(scan=False), layer_decay=d, depth=3)
  enc = scales["encoder"]
  assert float(enc["patch_embed"]["kernel"]) == np.float32(d**4)
  assert float(enc["cls_token"]) == np.float32(d**4)
  for i in range(3):
    for leaf in jax.tree.leaves(enc["blocks"][f"layer_{i}"]):
      assert float(leaf) == np.float32(d ** (3 - i))
  for leaf in jax.tree.leaves({"fc_norm": scales["fc_norm"], "head": scales["head"]}):
    assert float(leaf) == 1.0
  # Scanned layers: one scale per layer along the stacked axis.
  scanned = layer_scales(tiny_classifier_params(scan=True), layer_decay=d, depth=3)
  kernel = scanned["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
  np.testing.assert_allclose(kernel.reshape(-1), [d**3, d**2, d**1], rtol=1e-6)


def test_finetune_weight_decay_only_on_kernels():
  mask = decay_mask(tiny_classifier_params(scan=False))
  enc = mask["encoder"]
  assert enc["patch_embed"]["kernel"] and mask["head"]["kernel"]
  assert enc["blocks"]["layer_0"]["attn"]["qkv"]["kernel"]
  assert not enc["cls_token"] and not mask["head"]["bias"]
  assert not enc["blocks"]["layer_0"]["attn"]["qkv"]["bias"]
  assert not mask["fc_norm"]["scale"] and not enc["blocks"]["layer_0"]["norm1"]["scale"]


def test_finetune_adamw_is_adamw_at_the_scaled_rate():
  """Each parameter moves as torch AdamW would at lr * its layer scale."""
  params = jax.tree.map(
    lambda s: jnp.full(s.shape, 0.3, s.dtype), tiny_classifier_params(scan=False)
  )
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.01, p.dtype), params)
  d, lr, wd = 0.5, 1e-3, 0.05
  tx = finetune_adamw(lr, params, depth=3, layer_decay=d, weight_decay=wd)
  updates, _ = tx.update(grads, tx.init(params), params)
  for path, scale, decayed in [
    (("encoder", "patch_embed", "kernel"), d**4, True),
    (("encoder", "cls_token"), d**4, False),
    (("head", "bias"), 1.0, False),
  ]:
    leaf = updates
    for key in path:
      leaf = leaf[key]
    adam = 1.0  # first step, constant gradient: m / sqrt(v) = 1 (up to eps)
    expected = -lr * scale * (adam + (wd * 0.3 if decayed else 0.0))
    np.testing.assert_allclose(np.asarray(leaf).reshape(-1)[0], expected, rtol=1e-4)
