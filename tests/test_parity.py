"""Parity with transformers' ViTMAE (PyTorch) and exactness of the converter.

A transformers `ViTMAEForPreTraining` with random weights (LayerNorm scales
and every bias randomised too, so a swapped or transposed tensor cannot hide
behind a 1 or a 0) is converted with `mae_jax.convert`; both models then see
the same images (NCHW for torch, NHWC here) and the same numpy noise.

Tolerances, float32 on CPU:
  mask, ids_restore                  exact
  predictions, encoder tokens        atol 1e-5, rtol 1e-5
  loss                               rtol 1e-5
  converted parameters, round trips  exact (np.array_equal)
  scanned vs per-layer blocks        atol 1e-6 (same arithmetic, other program)
Observed (jax 0.10.2, torch 2.13, CPU): predictions differ by at most 1.4e-6
(32 px models) and 5.5e-6 (224 px, patch 16) on values up to ~4, encoder
tokens by 1.9e-6, the loss by at most 5e-7 (relative 2e-7); `pytest -s`
prints the differences of the forward tests.

Every test name contains `parity`: `pytest -k parity` selects them all.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTMAEModel
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from mae_jax.convert import (
  authors_from_params,
  export_checkpoint,
  import_to_checkpoint,
  load_state_dict,
  params_from_authors,
  params_from_state_dict,
  read_checkpoint_params,
  save_state_dict,
)
from mae_jax.convert.__main__ import main as convert_main
from mae_jax.core import checkpointing
from mae_jax.model.config import ModelConfig
from mae_jax.model.mae import MaskedAutoencoder
from mae_jax.model.pos_embed import sincos_2d
from mae_jax.model.stacking import stack_layers

ATOL = RTOL = 1e-5
LOSS_RTOL = 1e-5
SCAN_ATOL = 1e-6
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = ModelConfig(
  image_size=32,
  patch_size=4,
  channels=3,
  width=64,
  depth=2,
  heads=4,
  decoder_width=32,
  decoder_depth=1,
  decoder_heads=4,
)
# Patch 16 at 224 px (the reference grid, 196 patches), narrow to stay fast.
PATCH16 = ModelConfig(
  image_size=224,
  patch_size=16,
  channels=3,
  width=32,
  depth=1,
  heads=2,
  decoder_width=32,
  decoder_depth=1,
  decoder_heads=2,
)


# --- building the reference -------------------------------------------------


def hf_config(config: ModelConfig) -> ViTMAEConfig:
  return ViTMAEConfig(
    hidden_size=config.width,
    num_hidden_layers=config.depth,
    num_attention_heads=config.heads,
    intermediate_size=int(config.width * config.mlp_ratio),
    decoder_hidden_size=config.decoder_width,
    decoder_num_hidden_layers=config.decoder_depth,
    decoder_num_attention_heads=config.decoder_heads,
    decoder_intermediate_size=int(config.decoder_width * config.decoder_mlp_ratio),
    image_size=config.image_size,
    patch_size=config.patch_size,
    num_channels=config.channels,
    mask_ratio=config.mask_ratio,
    norm_pix_loss=config.norm_pix_loss,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    attn_implementation="eager",
  )


def transformers_sincos(width: int, grid: int) -> torch.Tensor:
  """transformers' own table, in the released weights' [w, h] order."""
  table = build_2d_sinusoidal_position_embedding(grid, grid, width, cls_token=True)
  half = width // 2
  return torch.cat([table[:, half:], table[:, :half]], dim=-1)[None]


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Random values for every tensor; fixed sin-cos tables for the buffers.

  (transformers 5 leaves the sin-cos buffers at zero on a fresh model.)
  """
  generator = torch.Generator().manual_seed(seed)
  grid = model.config.image_size // model.config.patch_size
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("position_embeddings") or name.endswith("decoder_pos_embed"):
        tensor.copy_(transformers_sincos(tensor.shape[-1], grid))
        continue
      noise = torch.randn(tensor.shape, generator=generator)
      if "layernorm" in name or "decoder_norm" in name:
        value = (1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise
      elif name.endswith("bias"):
        value = 0.2 * noise
      elif tensor.ndim >= 2 and "token" not in name:
        value = noise / np.sqrt(np.prod(tensor.shape[1:]))
      else:  # cls / mask tokens
        value = 0.5 * noise
      tensor.copy_(value)
  return model.eval()


def reference_model(config: ModelConfig, seed: int = 0) -> ViTMAEForPreTraining:
  torch.manual_seed(seed)
  return randomise(ViTMAEForPreTraining(hf_config(config)), seed)


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def images_and_noise(config: ModelConfig, batch: int = 3, seed: int = 1):
  rng = np.random.default_rng(seed)
  nhwc = rng.normal(size=(batch, config.image_size, config.image_size, config.channels)).astype(
    np.float32
  )
  noise = rng.random((batch, config.num_patches), dtype=np.float32)
  return nhwc, noise


def max_difference(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


# --- independent renamings, written out here (not taken from the converter) --


def authors_from_transformers(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The facebookresearch/mae layout of a transformers state dict."""
  block_names = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
  }
  top_names = {
    "vit.embeddings.cls_token": "cls_token",
    "vit.embeddings.position_embeddings": "pos_embed",
    "vit.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "vit.layernorm.weight": "norm.weight",
    "vit.layernorm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
  }
  out = {}
  for key, value in state.items():
    if key in top_names:
      out[top_names[key]] = value
      continue
    match = re.match(r"(vit\.layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$", key)
    if match:
      stack, index, module, kind = match.groups()
      prefix = "blocks" if stack == "vit.layers" else "decoder_blocks"
      if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
        if module.endswith("q_proj"):
          parts = [state[f"{stack}.{index}.attention.{p}_proj.{kind}"] for p in "qkv"]
          out[f"{prefix}.{index}.attn.qkv.{kind}"] = np.concatenate(parts, axis=0)
        continue
      out[f"{prefix}.{index}.{block_names[module]}.{kind}"] = value
      continue
    assert key.startswith("decoder.decoder_"), key  # embed, norm, pred
    out[key[len("decoder.") :]] = value
  return out


def old_transformers_from_current(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The key names older transformers versions (and hub checkpoints) use."""
  renames = [
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.fc1.", ".intermediate.dense."),
    (".mlp.fc2.", ".output.dense."),
  ]
  out = {}
  for key, value in state.items():
    key = key.replace("vit.layers.", "vit.encoder.layer.")
    for new, old in renames:
      key = key.replace(new, old)
    out[key] = value
  return out


# --- forward parity -----------------------------------------------------------


def run_both(config: ModelConfig, seed: int = 0):
  reference = reference_model(config, seed)
  params = params_from_state_dict(numpy_state(reference), config)
  nhwc, noise = images_and_noise(config)
  with torch.no_grad():
    expected = reference(
      pixel_values=torch.from_numpy(nhwc.transpose(0, 3, 1, 2)), noise=torch.from_numpy(noise)
    )
  got = MaskedAutoencoder(config).apply(
    {"params": params}, jnp.asarray(nhwc), noise=jnp.asarray(noise), train=False
  )
  return expected, got


def assert_same_output(expected, got):
  np.testing.assert_array_equal(np.asarray(got.mask), expected.mask.numpy())
  np.testing.assert_array_equal(np.asarray(got.ids_restore), expected.ids_restore.numpy())
  pred_diff = max_difference(got.pred, expected.logits.numpy())
  np.testing.assert_allclose(
    np.asarray(got.pred),
    expected.logits.numpy(),
    atol=ATOL,
    rtol=RTOL,
    err_msg=f"max |pred diff| {pred_diff:.2e}",
  )
  loss_diff = abs(float(got.loss) - float(expected.loss))
  np.testing.assert_allclose(
    float(got.loss), float(expected.loss), rtol=LOSS_RTOL, err_msg=f"|loss diff| {loss_diff:.2e}"
  )
  print(f"max |pred diff| {pred_diff:.2e}, |loss diff| {loss_diff:.2e}")


@pytest.mark.parametrize("channels,norm_pix_loss", [(3, True), (3, False), (1, True)])
def test_parity_small_model_matches_transformers(channels, norm_pix_loss):
  config = SMALL.replace(channels=channels, norm_pix_loss=norm_pix_loss)
  assert_same_output(*run_both(config))


def test_parity_patch16_at_224_matches_transformers():
  expected, got = run_both(PATCH16)
  assert int((1 - np.asarray(got.mask)).sum(axis=1)[0]) == 49  # 49 of 196 kept
  assert_same_output(expected, got)


def test_parity_scanned_layout_gives_same_loss():
  reference = reference_model(SMALL)
  params = params_from_state_dict(numpy_state(reference), SMALL)
  nhwc, noise = images_and_noise(SMALL)
  # Both compiled: the scan body is always compiled, and an op-by-op run of
  # the per-layer model rounds differently from compiled code (~1e-6), which
  # would measure eager-vs-jit rounding rather than the layout.
  plain = jax.jit(functools.partial(MaskedAutoencoder(SMALL).apply, train=False))(
    {"params": params}, nhwc, noise=noise
  )
  scanned = jax.jit(
    functools.partial(MaskedAutoencoder(SMALL.replace(scan_layers=True)).apply, train=False)
  )({"params": stack_layers(params)}, nhwc, noise=noise)
  np.testing.assert_allclose(float(scanned.loss), float(plain.loss), atol=SCAN_ATOL)
  np.testing.assert_allclose(np.asarray(scanned.pred), np.asarray(plain.pred), atol=SCAN_ATOL)


def test_parity_encoder_features_match_vitmae_model():
  """`encode` (all patches) == ViTMAEModel with nothing masked, in patch order."""
  config = SMALL.replace(mask_ratio=0.0)
  torch.manual_seed(0)
  reference = randomise(ViTMAEModel(hf_config(config)), seed=3)
  state = numpy_state(reference)  # no `vit.` prefix, no decoder
  params = params_from_state_dict(state, config)
  assert set(params) == {"encoder"}
  nhwc, _ = images_and_noise(config)
  # Increasing noise keeps the patches in their own order.
  in_order = np.broadcast_to(
    np.arange(config.num_patches, dtype=np.float32), (nhwc.shape[0], config.num_patches)
  )
  with torch.no_grad():
    expected = reference(
      pixel_values=torch.from_numpy(nhwc.transpose(0, 3, 1, 2)),
      noise=torch.from_numpy(np.ascontiguousarray(in_order)),
    )
  features = MaskedAutoencoder(config).apply({"params": params}, nhwc, method="encode")
  tokens = expected.last_hidden_state.numpy()
  np.testing.assert_allclose(
    np.asarray(features.tokens),
    tokens,
    atol=ATOL,
    rtol=RTOL,
    err_msg=f"max diff {max_difference(features.tokens, tokens):.2e}",
  )
  np.testing.assert_allclose(np.asarray(features.cls), tokens[:, 0], atol=ATOL, rtol=RTOL)


# --- the three layouts convert to the same parameters ----------------------------


def test_parity_authors_layout_converts_to_same_params():
  state = numpy_state(reference_model(SMALL))
  authors = authors_from_transformers(state)
  assert "blocks.1.attn.qkv.weight" in authors and "decoder_blocks.0.norm2.bias" in authors
  assert_trees_equal(params_from_state_dict(authors, SMALL), params_from_state_dict(state, SMALL))


def test_parity_old_transformers_layout_converts_to_same_params():
  state = numpy_state(reference_model(SMALL))
  old = old_transformers_from_current(state)
  assert "vit.encoder.layer.0.attention.attention.query.weight" in old
  assert "decoder.decoder_layers.0.output.dense.bias" in old
  assert_trees_equal(params_from_state_dict(old, SMALL), params_from_state_dict(state, SMALL))


def test_parity_export_matches_authors_layout_exactly():
  """transformers -> mae_jax -> authors' layout == the independent renaming."""
  state = numpy_state(reference_model(SMALL))
  exported = authors_from_params(params_from_state_dict(state, SMALL), SMALL)
  expected = authors_from_transformers(state)
  assert sorted(exported) == sorted(expected)
  for key in expected:
    assert exported[key].dtype == np.float32
    if key.endswith("pos_embed"):  # ours, compared with transformers' table
      np.testing.assert_allclose(exported[key], expected[key], atol=1e-6, err_msg=key)
    else:
      np.testing.assert_array_equal(exported[key], expected[key], err_msg=key)


# --- round trips ----------------------------------------------------------------


def test_parity_round_trip_through_authors_layout_and_files(tmp_path):
  params = params_from_state_dict(numpy_state(reference_model(SMALL)), SMALL)
  authors = authors_from_params(params, SMALL)
  assert_trees_equal(params_from_authors(authors, SMALL), params)
  for name in ("mae.pth", "mae.safetensors"):
    path = str(tmp_path / name)
    save_state_dict(authors, path)
    loaded = load_state_dict(path)
    assert sorted(loaded) == sorted(authors)
    assert_trees_equal(params_from_state_dict(loaded, SMALL), params)
  # The .pth is wrapped like the authors' released files.
  assert set(torch.load(str(tmp_path / "mae.pth"), weights_only=True)) == {"model"}
  # Scanned params export to the same file contents.
  assert_trees_equal(authors_from_params(stack_layers(params), SMALL), authors)


def test_parity_cli_round_trip_through_orbax_checkpoint(tmp_path):
  config = SMALL.replace(channels=1)
  authors = authors_from_transformers(numpy_state(reference_model(config)))
  source = str(tmp_path / "authors.pth")
  save_state_dict(authors, source)
  checkpoint = str(tmp_path / "checkpoint")
  command = [
    sys.executable,
    "-m",
    "mae_jax.convert",
    f"--input={source}",
    f"--output={checkpoint}",
    "--patch_size=4",
    "--width=64",
    "--depth=2",
    "--heads=4",
    "--decoder_width=32",
    "--decoder_depth=1",
    "--decoder_heads=4",
    "--image_size=32",
    "--channels=1",
    "--scan_layers",
  ]
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr[-3000:]

  metadata = checkpointing.read_metadata(checkpoint)
  assert metadata["param_layout"] == "layers" and metadata["model"]["scan_layers"] is True
  assert metadata["model"]["channels"] == 1
  params, restored_config = read_checkpoint_params(checkpoint)
  assert restored_config.replace(scan_layers=False) == config
  assert_trees_equal(params, params_from_authors(authors, config))

  exported = str(tmp_path / "exported.safetensors")
  assert convert_main([f"--input={checkpoint}", f"--output={exported}"]) == 0
  assert_trees_equal(load_state_dict(exported), authors)


def test_parity_encoder_only_file_round_trip(tmp_path):
  """Like mae_pretrain_vit_*.pth: no decoder keys -> encoder-only everything."""
  authors = authors_from_transformers(numpy_state(reference_model(SMALL)))
  encoder_only = {k: v for k, v in authors.items() if not k.startswith(("decoder_", "mask_token"))}
  source = str(tmp_path / "encoder.pth")
  save_state_dict(encoder_only, source)
  checkpoint = str(tmp_path / "checkpoint")
  import_to_checkpoint(source, checkpoint, SMALL)
  params, _ = read_checkpoint_params(checkpoint)
  assert set(params) == {"encoder"}
  exported = str(tmp_path / "exported.pth")
  export_checkpoint(checkpoint, exported)
  assert_trees_equal(load_state_dict(exported), encoder_only)


def test_parity_bfloat16_files_convert(tmp_path):
  """Half-precision files: values widen exactly; sin-cos checked at their precision."""
  from safetensors.torch import save_file as save_torch_safetensors

  reference = reference_model(SMALL).to(torch.bfloat16)
  state = reference.state_dict()
  # (Buffers left out: bfloat16-rounded sin-cos is too far off for a float32 file.)
  widened = {k: v.to(torch.float32).numpy() for k, v in state.items() if "pos" not in k}
  expected = params_from_state_dict(widened, SMALL)
  torch.save(state, str(tmp_path / "bf16.pth"))
  save_torch_safetensors(
    {k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bf16.safetensors")
  )
  for name in ("bf16.pth", "bf16.safetensors"):
    loaded = load_state_dict(str(tmp_path / name))
    assert loaded["vit.layernorm.bias"].dtype.name == "bfloat16"
    params = params_from_state_dict(loaded, SMALL)
    assert_trees_equal(params, expected)
    assert jax.tree.leaves(params)[0].dtype == np.float32


# --- what the converter refuses ------------------------------------------------------


@pytest.fixture(scope="module")
def authors_state():
  return authors_from_transformers(numpy_state(reference_model(SMALL)))


def test_parity_converter_names_wrong_shape(authors_state):
  state = dict(authors_state)
  state["blocks.1.mlp.fc1.weight"] = np.zeros((128, 64), np.float32)
  with pytest.raises(
    ValueError,
    match=r"blocks\.1\.mlp\.fc1\.weight: expected shape "
    r"\(256, 64\), found \(128, 64\)",
  ):
    params_from_state_dict(state, SMALL)


def test_parity_converter_names_wrong_shape_with_file_key():
  state = numpy_state(reference_model(SMALL))
  state["vit.layers.0.mlp.fc2.weight"] = np.zeros((64, 128), np.float32)
  with pytest.raises(ValueError, match=r"expected shape \(64, 256\), found \(64, 128\)") as info:
    params_from_state_dict(state, SMALL)
  assert "vit.layers.0.mlp.fc2.weight" in str(info.value)


def test_parity_converter_other_width_is_a_shape_error(authors_state):
  with pytest.raises(
    ValueError,
    match=r"blocks\.0\.attn\.qkv\.weight: expected shape "
    r"\(96, 32\), found \(192, 64\)",
  ):
    params_from_state_dict(authors_state, SMALL.replace(width=32, heads=2))


def test_parity_converter_names_missing_key(authors_state):
  state = dict(authors_state)
  del state["decoder_norm.bias"]
  with pytest.raises(ValueError, match=r"missing key decoder_norm\.bias: expected shape \(32,\)"):
    params_from_state_dict(state, SMALL)
  # In transformers' layouts the message also gives the file's own name.
  current = numpy_state(reference_model(SMALL))
  del current["vit.layernorm.weight"]
  with pytest.raises(
    ValueError,
    match=r"missing key norm\.weight \(vit\.layernorm\.weight in "
    r"the file\): expected shape \(64,\)",
  ):
    params_from_state_dict(current, SMALL)
  old = old_transformers_from_current(numpy_state(reference_model(SMALL)))
  del old["vit.encoder.layer.1.intermediate.dense.weight"]
  with pytest.raises(ValueError, match=r"vit\.encoder\.layer\.1\.intermediate\.dense\.weight"):
    params_from_state_dict(old, SMALL)
  # One of q, k, v missing: named as in the file.
  current = numpy_state(reference_model(SMALL))
  del current["vit.layers.1.attention.k_proj.bias"]
  with pytest.raises(
    ValueError, match=r"missing key\(s\) \['vit\.layers\.1\.attention\.k_proj\.bias'\]"
  ):
    params_from_state_dict(current, SMALL)


def test_parity_converter_unexpected_keys_need_allow_unused(authors_state):
  state = dict(
    authors_state,
    **{"head.weight": np.zeros((10, 64), np.float32), "head.bias": np.zeros((10,), np.float32)},
  )
  with pytest.raises(ValueError, match=r"unexpected keys.*'head\.bias', 'head\.weight'"):
    params_from_state_dict(state, SMALL)
  assert_trees_equal(
    params_from_state_dict(state, SMALL, allow_unused=True),
    params_from_state_dict(authors_state, SMALL),
  )


def test_parity_converter_refuses_learned_positional_embeddings(authors_state):
  state = dict(authors_state)
  state["pos_embed"] = state["pos_embed"] + 0.01
  with pytest.raises(ValueError, match=r"pos_embed differs from the fixed 2-D sin-cos table"):
    params_from_state_dict(state, SMALL)
  with pytest.raises(
    ValueError,
    match=r"pos_embed: expected shape \(1, 65, 64\) \(a 8x8 patch grid plus the cls row, "
    r"image 32\), found \(1, 17, 64\) \(a table of 16 patches\)",
  ):
    params_from_state_dict(dict(authors_state, pos_embed=sincos_2d(64, 4)[None]), SMALL)


def test_parity_converter_refuses_unknown_layout():
  with pytest.raises(ValueError, match="cannot tell which layout"):
    params_from_state_dict({"some.weight": np.zeros(3, np.float32)}, SMALL)


class _MakesDirectoryWhenUnpickled:
  """A pickle payload: unpickling it calls os.mkdir(marker)."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.mkdir, (self.marker,))


def test_parity_pth_with_code_is_refused(tmp_path):
  for writer in ("torch.save", "pickle.dump"):
    marker = tmp_path / f"marker_{writer}"
    path = str(tmp_path / f"evil_{writer}.pth")
    payload = {
      "model": {"cls_token": torch.zeros(1, 1, 64), "x": _MakesDirectoryWhenUnpickled(str(marker))}
    }
    if writer == "torch.save":
      torch.save(payload, path)
    else:
      with open(path, "wb") as file:
        pickle.dump(payload, file, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*could run arbitrary code"):
      load_state_dict(path)
    assert not marker.exists(), f"{writer}: the payload ran"
  # The crafted file is live: plain unpickling would have run it.
  with open(str(tmp_path / "evil_pickle.dump.pth"), "rb") as file:
    pickle.load(file)
  assert (tmp_path / "marker_pickle.dump").exists()


def test_parity_torch_is_imported_only_for_pth_files():
  code = (
    "import sys, mae_jax.convert, mae_jax.convert.__main__; "
    "assert 'torch' not in sys.modules, 'torch imported eagerly'"
  )
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr[-2000:]


# --- export for transformers ----------------------------------------------------


def exported_directory(tmp_path, state: dict, config: ModelConfig, name: str = "hf") -> str:
  """An authors'-layout file imported as a run's checkpoint (WORKDIR/checkpoints,
  with the run's metrics beside it), exported with --layout=transformers."""
  source = str(tmp_path / f"{name}.pth")
  save_state_dict(authors_from_transformers(state), source)
  workdir = tmp_path / f"{name}_run"
  checkpoint = str(workdir / "checkpoints")
  import_to_checkpoint(source, checkpoint, config)
  # The run's files as a run at the checkpoint's step (an import is step 0)
  # leaves them; a row past that step is not the checkpoint's.
  (workdir / "metrics.jsonl").write_text(
    '{"step": 0, "loss": 0.41, "loss_avg": 0.4321}\n'
    '{"step": 0, "eval_loss": 0.4237, "knn_top1": 88.3}\n{"step": 20, "eval_loss": 9.0}\n'
  )
  (workdir / "config.json").write_text(
    '{"global_batch_size": 128, "num_epochs": 40, "data": {"source": "digits", "name": "", '
    '"train_split": "train", "image_size": 32, "mean": [0.3, 0.4, 0.5], "std": [0.2, 0.25, 0.3]}}'
  )
  (workdir / "run_info.json").write_text('{"plan": {"steps_per_epoch": 11}}')
  output = str(tmp_path / name)
  assert convert_main([f"--input={checkpoint}", f"--output={output}", "--layout=transformers"]) == 0
  return output


def test_parity_transformers_export_loads_and_gives_the_same_loss(tmp_path):
  """export -> ViTMAEForPreTraining.from_pretrained: no missing or
  unexpected key; the same images and noise give mae_jax's loss and
  reconstruction; save_pretrained -> import gives the same parameters."""
  reference = reference_model(SMALL)
  state = numpy_state(reference)
  params = params_from_state_dict(state, SMALL)
  output = exported_directory(tmp_path, state, SMALL)
  loaded, info = ViTMAEForPreTraining.from_pretrained(
    output, output_loading_info=True, attn_implementation="eager"
  )
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  nhwc, noise = images_and_noise(SMALL)
  with torch.no_grad():
    expected = loaded.eval()(
      pixel_values=torch.from_numpy(nhwc.transpose(0, 3, 1, 2)), noise=torch.from_numpy(noise)
    )
  got = MaskedAutoencoder(SMALL).apply(
    {"params": params}, jnp.asarray(nhwc), noise=jnp.asarray(noise), train=False
  )
  assert_same_output(expected, got)
  # Round trip: transformers saves it, mae_jax imports that: the same parameters.
  again = str(tmp_path / "saved_again")
  loaded.save_pretrained(again)
  checkpoint = str(tmp_path / "reimported")
  imported = import_to_checkpoint(os.path.join(again, "model.safetensors"), checkpoint, SMALL)
  assert imported.layout == "transformers"
  assert_trees_equal(read_checkpoint_params(checkpoint)[0], params)
  # The model card: the architecture, the run's metrics, the licence of what
  # went in (an authors'-layout file: CC BY-NC 4.0).
  card = open(os.path.join(output, "README.md")).read()
  assert "license: cc-by-nc-4.0" in card and "CC BY-NC 4.0" in card
  assert "width 64 depth 2" in card and "eval_loss: 0.4237" in card and "9.0" not in card
  assert "knn_top1: 88.3" in card and "global batch 128; this checkpoint: step 0, 0 epochs" in card
  assert "loss (mean over the last logging interval): 0.4321" in card
  assert "mean (0.3, 0.4, 0.5) and std (0.2, 0.25, 0.3)" in card


def test_parity_the_export_carries_its_image_processor(tmp_path):
  """preprocessor_config.json: AutoImageProcessor prepares images as the run
  did (bicubic to the model's size, /255, the run's mean and std), and
  transformers' image-feature-extraction pipeline runs on the directory."""
  from PIL import Image
  from transformers import AutoImageProcessor, ViTImageProcessor, pipeline

  output = exported_directory(tmp_path, numpy_state(reference_model(SMALL)), SMALL)
  processor = AutoImageProcessor.from_pretrained(output)
  assert isinstance(processor, ViTImageProcessor)
  pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  got = processor(Image.fromarray(pixels), return_tensors="np")["pixel_values"][0]
  mean, std = np.array([0.3, 0.4, 0.5]), np.array([0.2, 0.25, 0.3])
  expected = ((pixels / 255 - mean) / std).transpose(2, 0, 1)  # already 32 px: no resize
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  extract = pipeline("image-feature-extraction", model=output)
  extract.model.config.mask_ratio = 0.0  # every patch, as the card says
  features = np.asarray(extract(Image.fromarray(pixels)))
  assert features.shape == (1, 1 + (32 // 4) ** 2, 64)


def test_parity_encoder_only_exports_as_vitmae_model(tmp_path):
  reference = reference_model(SMALL)
  state = {k: v for k, v in numpy_state(reference).items() if not k.startswith("decoder.")}
  output = exported_directory(tmp_path, state, SMALL, name="encoder")
  assert json.load(open(os.path.join(output, "config.json")))["architectures"] == ["ViTMAEModel"]
  loaded, info = ViTMAEModel.from_pretrained(
    output, output_loading_info=True, attn_implementation="eager"
  )
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  for name, value in loaded.state_dict().items():
    if "position_embeddings" not in name:
      np.testing.assert_array_equal(value.numpy(), state[f"vit.{name}"], err_msg=name)
  assert "not included: encoder-only checkpoint" in open(os.path.join(output, "README.md")).read()


def test_parity_the_licence_follows_init_from_and_is_said_on_import(tmp_path, capsys):
  from mae_jax.convert import licences

  source = str(tmp_path / "authors.pth")
  save_state_dict(authors_from_transformers(numpy_state(reference_model(SMALL))), source)
  checkpoint = str(tmp_path / "imported")
  import_to_checkpoint(source, checkpoint, SMALL)
  assert checkpointing.read_metadata(checkpoint)["licence"] == licences.AUTHORS_LICENCE
  # A run initialised from it inherits the record; a run from scratch has none.
  assert licences.licence_of({"config": {"init_from": checkpoint}}) == licences.AUTHORS_LICENCE
  assert licences.licence_of({"config": {"init_from": ""}}) == licences.NOT_RECORDED
  gone = licences.licence_of({"config": {"init_from": str(tmp_path / "deleted")}})
  assert gone["text"].startswith("unknown")
  # The importer says it in its output.
  other = str(tmp_path / "again")
  args = [f"--input={source}", f"--output={other}", "--patch_size=4", "--width=64", "--depth=2"]
  args += ["--heads=4", "--decoder_width=32", "--decoder_depth=1", "--decoder_heads=4"]
  assert convert_main(args + ["--image_size=32"]) == 0
  assert "CC BY-NC 4.0 and stay so after conversion" in capsys.readouterr().out


# --- rectangular images -----------------------------------------------------------


def authors_sincos_hw(embed_dim: int, rows: int, cols: int) -> np.ndarray:
  """The authors' get_2d_sincos_pos_embed (util/pos_embed.py), written out
  here for a rows x cols grid: meshgrid(grid_w, grid_h), the first half
  embedding grid[0] (the column index), cls row of zeros first."""
  grid = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape(2, 1, rows, cols)

  def one_d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  table = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
  return np.concatenate([np.zeros([1, embed_dim]), table], axis=0)


def test_parity_rectangular_sincos_is_the_authors_table_for_an_h_by_w_grid():
  for rows, cols in ((2, 5), (6, 4), (14, 20)):
    np.testing.assert_allclose(
      sincos_2d(64, (rows, cols)), authors_sincos_hw(64, rows, cols), atol=1e-6
    )
  np.testing.assert_array_equal(sincos_2d(64, (7, 7)), sincos_2d(64, 7))


def test_parity_rectangular_images_match_transformers_interpolated_positions(monkeypatch):
  """A 32x48 image through a model converted from a square (32 px)
  transformers ViTMAE: transformers with interpolate_pos_encoding=True is the
  independent implementation. Its encoder table is the square one resized
  bicubically per axis (mae_jax's interpolate_pos_embed); its decoder's is
  resized along the flattened sequence (transformers' own rule), both set
  into mae_jax's model here. Masks, predictions, loss and every gradient
  agree; the patch grid, masking, targets and loss are mae_jax's own."""
  from mae_jax.model import mae as mae_module
  from mae_jax.model.pos_embed import bicubic_matrix, interpolate_pos_embed

  square = SMALL  # 32 px, patch 4: an 8 x 8 grid
  rect = SMALL.replace(image_size=(32, 48))  # 8 x 12
  reference = reference_model(square, seed=5)
  params = params_from_state_dict(numpy_state(reference), square)

  def tables(embed_dim, grid, with_cls_row=True):
    table = sincos_2d(embed_dim, 8)
    if embed_dim == square.width:  # the encoder's: per axis
      return interpolate_pos_embed(table, grid, old_grid=8)
    sequence = bicubic_matrix(64, grid[0] * grid[1]) @ table[1:].astype(np.float64)
    return np.concatenate([table[:1], sequence.astype(np.float32)], axis=0)

  monkeypatch.setattr(mae_module, "sincos_2d", tables)
  rng = np.random.default_rng(2)
  nhwc = rng.normal(size=(2, 32, 48, 3)).astype(np.float32)
  noise = rng.random((2, rect.num_patches), dtype=np.float32)
  torch_images = torch.from_numpy(nhwc.transpose(0, 3, 1, 2))
  inputs = dict(
    pixel_values=torch_images, noise=torch.from_numpy(noise), interpolate_pos_encoding=True
  )
  reference(**inputs).loss.backward()
  with torch.no_grad():
    expected = reference(**inputs)

  def loss_fn(p):
    out = MaskedAutoencoder(rect).apply({"params": p}, jnp.asarray(nhwc), noise=noise, train=False)
    return out.loss, out

  (loss, got), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  assert got.pred.shape == (2, 96, 48) and rect.grid_hw == (8, 12)
  assert_same_output(expected, got)
  torch_grads = {
    name: (p.grad.numpy() if p.grad is not None else p.detach().numpy())
    for name, p in reference.named_parameters()
  }
  torch_grads.update({k: v for k, v in numpy_state(reference).items() if k not in torch_grads})
  expected_grads = params_from_state_dict(torch_grads, square)
  for (path, ours), theirs in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected_grads)
  ):
    np.testing.assert_allclose(
      np.asarray(ours), np.asarray(theirs), atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path)
    )


def test_parity_encoder_at_a_rectangle_from_a_square_checkpoint_matches_transformers():
  """Probing or fine-tuning at (h, w) from a square checkpoint resizes its
  table per axis (interpolate_pos_embed, the reference's bicubic): the
  encoder then equals transformers' ViTMAEModel with
  interpolate_pos_encoding=True on the same rectangle, nothing masked."""
  from mae_jax.model.mae import Encoder
  from mae_jax.model.pos_embed import interpolate_pos_embed

  reference = randomise(ViTMAEModel(hf_config(SMALL)), seed=6)
  reference.config.mask_ratio = 0.0
  state = {f"vit.{k}": v for k, v in numpy_state(reference).items()}
  params = params_from_state_dict(state, SMALL)["encoder"]
  rect = SMALL.replace(image_size=(48, 32))
  params["pos_embed"] = interpolate_pos_embed(
    sincos_2d(SMALL.width, 8)[None], rect.grid_hw, old_grid=8
  )
  nhwc = np.random.default_rng(3).normal(size=(2, 48, 32, 3)).astype(np.float32)
  noise = np.tile(np.arange(rect.num_patches, dtype=np.float32), (2, 1))  # keeps the order
  with torch.no_grad():
    expected = reference(
      pixel_values=torch.from_numpy(nhwc.transpose(0, 3, 1, 2)),
      noise=torch.from_numpy(noise),
      interpolate_pos_encoding=True,
    ).last_hidden_state.numpy()
  got = Encoder(rect, learned_pos_embed=True).apply({"params": params}, jnp.asarray(nhwc), None)
  np.testing.assert_allclose(np.asarray(got), expected, atol=ATOL, rtol=RTOL)


def test_parity_conversion_of_rectangles_names_both_grids(tmp_path):
  """A square file's sin-cos buffers refused for a 32x48 model, with both
  grids; a 32x48 checkpoint round-trips through the authors' layout, and
  transformers' (square) ViTMAE is refused for it with what to do."""
  from mae_jax.errors import CheckpointError, UsageError

  authors = authors_from_transformers(numpy_state(reference_model(SMALL)))
  rect = SMALL.replace(image_size=(32, 48))
  with pytest.raises(CheckpointError, match=r"8x12 patch grid.*image 32x48.*table of 64 patches"):
    params_from_authors(authors, rect)
  trunk = {k: v for k, v in authors.items() if not k.endswith("pos_embed")}
  params = params_from_authors(trunk, rect)  # the weights fit any grid; the tables are the grid's
  exported = authors_from_params(params, rect)
  assert exported["pos_embed"].shape == (1, 97, 64)
  np.testing.assert_allclose(exported["pos_embed"][0], authors_sincos_hw(64, 8, 12), atol=1e-6)
  checkpoint = str(tmp_path / "rect")
  source = str(tmp_path / "rect.safetensors")
  save_state_dict(exported, source)
  args = [f"--input={source}", f"--output={checkpoint}", "--patch_size=4", "--width=64"]
  args += ["--depth=2", "--heads=4", "--decoder_width=32", "--decoder_depth=1"]
  assert convert_main(args + ["--decoder_heads=4", "--image_size=32x48"]) == 0
  restored, config = read_checkpoint_params(checkpoint)
  assert config.image_size == (32, 48)
  assert_trees_equal(restored, params)
  with pytest.raises(UsageError, match="transformers' ViTMAE is square"):
    convert_main([f"--input={checkpoint}", f"--output={tmp_path / 'hf'}", "--layout=transformers"])


def test_parity_convert_says_what_is_wrong_first(tmp_path):
  """A missing --input is named as missing; a run's workdir is taken where
  its checkpoints directory is; an existing output is refused unless
  --overwrite; orbax's read-only notes are not shown."""
  from mae_jax.errors import UsageError

  exported_directory(tmp_path, numpy_state(reference_model(SMALL)), SMALL)  # hf_run/checkpoints
  workdir = str(tmp_path / "hf_run")
  missing = str(tmp_path / "nowhere.pth")
  for extra in ([], ["--model=B/16"]):
    with pytest.raises(UsageError, match="nowhere.pth' does not exist"):
      convert_main([f"--input={missing}", f"--output={tmp_path / 'x'}", *extra])
  output = str(tmp_path / "from_workdir.safetensors")
  command = [sys.executable, "-m", "mae_jax.convert", f"--input={workdir}", f"--output={output}"]
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu")
  result = subprocess.run(command, capture_output=True, text=True, env=env)
  assert result.returncode == 0 and os.path.exists(output), result.stderr[-2000:]
  assert "read only" not in result.stderr and "read_only" not in result.stderr, result.stderr
  with pytest.raises(UsageError, match="already exists.*--overwrite"):
    convert_main([f"--input={workdir}", f"--output={output}"])
  assert convert_main([f"--input={workdir}", f"--output={output}", "--overwrite"]) == 0


def test_parity_the_export_loads_as_transformers_image_classifier(tmp_path):
  """ViTForImageClassification.from_pretrained(export, num_labels=N): every
  encoder tensor loads, the classifier is new, the decoder is left out;
  its head reads the cls token after the final LayerNorm (docs/weights.md)."""
  from transformers import ViTForImageClassification

  state = numpy_state(reference_model(SMALL))
  output = exported_directory(tmp_path, state, SMALL)
  model, info = ViTForImageClassification.from_pretrained(
    output, num_labels=7, output_loading_info=True, attn_implementation="eager"
  )
  assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"], info
  assert not info["mismatched_keys"]
  assert all(key.startswith("decoder.") for key in info["unexpected_keys"])
  loaded = model.state_dict()
  for name, value in state.items():
    if name.startswith("vit.") and "position_embeddings" not in name:
      np.testing.assert_array_equal(loaded[name].numpy(), value, err_msg=name)
  images = torch.from_numpy(images_and_noise(SMALL)[0].transpose(0, 3, 1, 2))
  with torch.no_grad():
    hidden = model.vit(pixel_values=images).last_hidden_state  # after the final LayerNorm
    np.testing.assert_allclose(
      model(pixel_values=images).logits.numpy(), model.classifier(hidden[:, 0]).numpy(), rtol=1e-6
    )
