"""A checkpoint as a transformers model directory: config.json,
model.safetensors, preprocessor_config.json, README.md.

`ViTMAEForPreTraining.from_pretrained(DIR)` loads what this writes (an
encoder-only checkpoint: `ViTMAEModel`) with no missing or unexpected key:
the weights go through the authors' layout (`authors.py`) and transformers'
current names (`layouts.from_authors_layout`); config.json carries the
sizes and the reference's settings transformers' defaults differ from
(LayerNorm eps 1e-6, exact GELU). preprocessor_config.json is a
ViTImageProcessor with the run's image size, mean and std (the ImageNet
ones for weights that did not come from a run here, as the authors'),
so `AutoImageProcessor` and transformers' pipelines prepare images as the
run did. README.md is a model card as the Hub's directories carry one: the
architecture, the normalisation, the data, the steps and epochs of the
checkpoint, the run's metrics (the smoothed loss it printed, the eval loss,
k-NN, results.json) read from its files, and the licence of what went in
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
PROCESSOR = "preprocessor_config.json"
# The authors' normalisation (ImageNet's), for weights with no run config.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalisation(config: ModelConfig, run_config: Mapping) -> tuple[list, list, str]:
  """(mean, std, where they come from) of the images the weights saw."""
  data = run_config.get("data") or {}
  if data.get("mean") and data.get("std"):
    return list(data["mean"]), list(data["std"]), "the run's data config"
  mean, std = IMAGENET_MEAN[: config.channels], IMAGENET_STD[: config.channels]
  return list(mean), list(std), "ImageNet's (no run config recorded: the authors' default)"


def processor_config(config: ModelConfig, mean: list, std: list) -> dict:
  """preprocessor_config.json: transformers' ViTImageProcessor for these
  weights (bicubic resize to the model's size, /255, the run's mean/std)."""
  height, width = config.image_hw
  return {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True,
    "size": {"height": height, "width": width},
    "resample": 3,  # PIL's BICUBIC, the reference's interpolation
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": mean,
    "image_std": std,
    "do_convert_rgb": config.channels == 3,
  }


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


def _run_files(checkpoint_dir: str, step: int) -> dict:
  """The run's config.json, run_info.json and results.json, and the newest
  value of each metric logged at or before `step`, where the checkpoint
  directory sits in a run's workdir (WORKDIR/checkpoints)."""
  workdir = storage.parent(checkpoint_dir)
  found: dict = {}
  for name in ("config.json", "run_info.json", "results.json"):
    path = storage.join(workdir, name)
    if storage.exists(path):
      found[name] = json.loads(storage.read_text(path))
  metrics_path = storage.join(workdir, "metrics.jsonl")
  if storage.exists(metrics_path):
    last: dict = {}
    for line in storage.read_text(metrics_path).splitlines():
      row = json.loads(line) if line.strip() else {}
      if row and row.get("step", 0) <= step:
        last.update(row)
    found["metrics"] = last
  return found


def _run_config(run: dict, metadata: dict) -> dict:
  """The run's resolved config: its config.json, else what the checkpoint recorded."""
  return run.get("config.json") or metadata.get("config") or {}


# The metrics a card shows, by the name it gives them. "loss" is the
# smoothed loss the run printed (the mean over the last logging interval).
CARD_METRICS = {
  "loss_avg": "loss (mean over the last logging interval)",
  "eval_loss": "eval_loss",
  "eval_baseline_loss": "eval_baseline_loss (each removed patch predicted by its mean)",
  "knn_top1": "knn_top1",
  "knn_top5": "knn_top5",
}


def model_card(
  config: ModelConfig,
  metadata: dict,
  checkpoint_dir: str,
  run: dict,
  *,
  step: int,
  params: int,
  encoder_only: bool,
) -> str:
  """README.md: what the weights are, how they were made, their licence.
  `run` is `_run_files` of the checkpoint's workdir."""
  licence = licences.licence_of(metadata)
  run_config = _run_config(run, metadata)
  data = run_config.get("data") or {}
  mean, std, where = normalisation(config, run_config)
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
    "## Images in",
    "",
    f"- {size_text(config.image_size)} px, {config.channels} channel(s), scaled to 0..1 then "
    f"normalised with mean {_numbers(mean)} and std {_numbers(std)} ({where}); "
    f"`{PROCESSOR}` (ViTImageProcessor) does this: "
    "`AutoImageProcessor.from_pretrained(this_directory)`",
    "- ViTMAEModel masks its input as in pretraining (mask_ratio): set "
    "`model.config.mask_ratio = 0.0` to encode every patch",
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
    per_epoch = (run.get("run_info.json") or {}).get("plan", {}).get("steps_per_epoch")
    epochs = f", {step / per_epoch:.3g} epochs ({per_epoch} steps each)" if per_epoch else ""
    lines.append(
      f"- global batch {run_config['global_batch_size']}; this checkpoint: step {step}{epochs}"
    )
  logged = run.get("metrics") or {}
  metrics = {label: logged[key] for key, label in CARD_METRICS.items() if key in logged}
  results = {
    name: value
    for name, value in (run.get("results.json") or {}).items()
    if isinstance(value, (int, float))
  }
  lines += ["", f"## Metrics of the run at step {step}", ""]
  if metrics or results:
    for name, value in {**metrics, **results}.items():
      if isinstance(value, (int, float)):
        lines.append(f"- {name}: {value:.4g}")
  else:
    lines.append("- not recorded (no metrics.jsonl or results.json beside the checkpoint)")
  lines += ["", "## Licence", "", licence["text"] + ".", ""]
  return "\n".join(lines)


def _numbers(values) -> str:
  return "(" + ", ".join(f"{v:g}" for v in values) + ")"


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
  run = _run_files(checkpoint_dir, step)
  mean, std, _ = normalisation(config, _run_config(run, metadata))
  storage.write_text(
    storage.join(output_dir, PROCESSOR), json.dumps(processor_config(config, mean, std), indent=2)
  )
  fixed = ("position_embeddings", "decoder_pos_embed")  # sin-cos tables, not trained
  count = sum(int(np.prod(v.shape)) for k, v in state.items() if not k.endswith(fixed))
  card = model_card(
    config, metadata, checkpoint_dir, run, step=step, params=count, encoder_only=encoder_only
  )
  storage.write_text(storage.join(output_dir, "README.md"), card)
  return hf_config["architectures"][0]
