"""A checkpoint as a transformers model directory: config.json, model.safetensors, README.md.

`ViTMAEForPreTraining.from_pretrained(DIR)` loads what this writes (an
encoder-only checkpoint: `ViTMAEModel`) with no missing or unexpected key:
the weights go through the authors' layout (`authors.py`) and transformers'
current names (`layouts.from_authors_layout`); config.json carries the
sizes and the reference's settings transformers' defaults differ from
(LayerNorm eps 1e-6, exact GELU). README.md is a model card as the Hub's
directories carry one: the architecture, the data, the steps, the final
metrics read from the run's files, and the licence of what went in
(`licences.licence_of`).
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from mae_jax import storage
from mae_jax.convert import licences
from mae_jax.convert.authors import authors_from_params
from mae_jax.convert.layouts import from_authors_layout
from mae_jax.errors import UsageError
from mae_jax.image_size import is_square, size_text
from mae_jax.model.config import ModelConfig

WEIGHTS = "model.safetensors"


def transformers_config(config: ModelConfig, *, encoder_only: bool) -> dict:
  """config.json of transformers' ViTMAEConfig for `config`."""
  return {
    "architectures": ["ViTMAEModel" if encoder_only else "ViTMAEForPreTraining"],
    "model_type": "vit_mae",
    "hidden_size": config.width,
    "num_hidden_layers": config.depth,
    "num_attention_heads": config.heads,
    "intermediate_size": int(config.width * config.mlp_ratio),
    "decoder_hidden_size": config.decoder_width,
    "decoder_num_hidden_layers": config.decoder_depth,
    "decoder_num_attention_heads": config.decoder_heads,
    "decoder_intermediate_size": int(config.decoder_width * config.decoder_mlp_ratio),
    "image_size": config.image_size,
    "patch_size": config.patch_size,
    "num_channels": config.channels,
    "mask_ratio": config.mask_ratio,
    "norm_pix_loss": config.norm_pix_loss,
    "hidden_act": "gelu",  # exact (erf) GELU, as the reference's nn.GELU
    "layer_norm_eps": 1e-6,  # the reference's; transformers' default is 1e-12
    "qkv_bias": True,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
    "initializer_range": 0.02,
    "torch_dtype": "float32",
  }


def transformers_state(params: Mapping, config: ModelConfig) -> dict[str, np.ndarray]:
  """mae_jax params -> transformers' state dict (float32, contiguous)."""
  encoder_only = "decoder" not in params
  state = from_authors_layout(authors_from_params(params, config), encoder_only=encoder_only)
  return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in state.items()}


def _run_files(checkpoint_dir: str) -> dict:
  """The run's config.json, last metrics and results.json, where the
  checkpoint directory sits in a run's workdir (WORKDIR/checkpoints)."""
  workdir = storage.parent(checkpoint_dir)
  found: dict = {}
  for name in ("config.json", "results.json"):
    path = storage.join(workdir, name)
    if storage.exists(path):
      found[name] = json.loads(storage.read_text(path))
  metrics_path = storage.join(workdir, "metrics.jsonl")
  if storage.exists(metrics_path):
    last: dict = {}
    for line in storage.read_text(metrics_path).splitlines():
      if line.strip():
        last.update(json.loads(line))
    found["metrics"] = last
  return found


CARD_METRICS = ("eval_loss", "eval_baseline_loss", "knn_top1", "knn_top5", "loss")


def model_card(
  config: ModelConfig,
  metadata: dict,
  checkpoint_dir: str,
  *,
  step: int,
  params: int,
  encoder_only: bool,
) -> str:
  """README.md: what the weights are, how they were made, their licence."""
  licence = licences.licence_of(metadata)
  run = _run_files(checkpoint_dir)
  run_config = run.get("config.json") or metadata.get("config") or {}
  data = run_config.get("data") or {}
  front = ["---", "library_name: transformers", "tags:", "- vit-mae", "- masked-autoencoder"]
  if licence.get("spdx"):
    front.append(f"license: {licence['spdx']}")
  front.append("---")
  kind = "ViTMAEModel (the encoder)" if encoder_only else "ViTMAEForPreTraining"
  lines = front + [
    "",
    f"# Masked autoencoder, ViT width {config.width} depth {config.depth}, patch "
    f"{config.patch_size}",
    "",
    f"Exported by mae_jax from `{checkpoint_dir}` (step "
    f"{step}) as transformers' {kind}: "
    f"`{kind.split()[0]}.from_pretrained(this_directory)`.",
    "",
    "## Architecture",
    "",
    f"- encoder: ViT, width {config.width}, depth {config.depth}, {config.heads} heads, MLP "
    f"ratio {config.mlp_ratio:g}, patch {config.patch_size}, {size_text(config.image_size)} px, "
    f"{config.channels} channel(s); fixed 2-D sin-cos position table",
    f"- decoder: width {config.decoder_width}, depth {config.decoder_depth}, "
    f"{config.decoder_heads} heads"
    + (" (not included: encoder-only checkpoint)" if encoder_only else ""),
    f"- masking ratio {config.mask_ratio:g}, norm-pix loss {config.norm_pix_loss}",
    f"- {params:,} parameters",
    "",
    "## Data and training",
    "",
    f"- source: {metadata.get('source', 'not recorded')}",
  ]
  if data:
    lines.append(
      f"- data: {data.get('source', '?')} {data.get('name') or ''} (train split "
      f"{data.get('train_split', '?')}, {data.get('image_size', '?')} px)".replace("  ", " ")
    )
  if run_config.get("global_batch_size"):
    lines.append(
      f"- global batch {run_config['global_batch_size']}, steps "
      f"{run_config.get('num_train_steps') or '-'} / epochs {run_config.get('num_epochs', '-')}"
    )
  metrics = {k: v for k, v in (run.get("metrics") or {}).items() if k in CARD_METRICS}
  results = run.get("results.json") or {}
  lines += ["", "## Final metrics", ""]
  if metrics or results:
    for name, value in {**metrics, **results}.items():
      if isinstance(value, (int, float)):
        lines.append(f"- {name}: {value:.4g}")
  else:
    lines.append("- not recorded (no metrics.jsonl or results.json beside the checkpoint)")
  lines += ["", "## Licence", "", licence["text"] + ".", ""]
  return "\n".join(lines)


def write_directory(
  params: Mapping,
  config: ModelConfig,
  output_dir: str,
  *,
  metadata: dict,
  checkpoint_dir: str,
  step: int,
) -> str:
  """Writes the three files for the checkpoint at `checkpoint_dir` (its
  `step`, its `metadata`); returns the architecture written."""
  from safetensors.numpy import save

  if not is_square(config.image_size):
    raise UsageError(
      f"this model takes {size_text(config.image_size)} images; transformers' ViTMAE is "
      "square (it runs other shapes only by resizing a square position table, not this "
      "model's own table): export it with --layout=authors."
    )
  encoder_only = "decoder" not in params
  storage.makedirs(output_dir)
  state = transformers_state(params, config)
  # transformers reads the "format" entry of the header to know the layout.
  storage.write_bytes(storage.join(output_dir, WEIGHTS), save(state, metadata={"format": "pt"}))
  hf_config = transformers_config(config, encoder_only=encoder_only)
  storage.write_text(storage.join(output_dir, "config.json"), json.dumps(hf_config, indent=2))
  fixed = ("position_embeddings", "decoder_pos_embed")  # sin-cos tables, not trained
  count = sum(int(np.prod(v.shape)) for k, v in state.items() if not k.endswith(fixed))
  card = model_card(
    config, metadata, checkpoint_dir, step=step, params=count, encoder_only=encoder_only
  )
  storage.write_text(storage.join(output_dir, "README.md"), card)
  return hf_config["architectures"][0]
