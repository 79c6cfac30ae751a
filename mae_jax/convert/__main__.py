"""Command line: PyTorch MAE weights <-> mae_jax orbax checkpoints.

Run `python -m mae_jax.convert --help` for both directions with examples.
"""

from __future__ import annotations

import argparse
import sys

from mae_jax import storage
from mae_jax.convert import licences
from mae_jax.convert.pipeline import EXPORT_LAYOUTS, export_checkpoint, import_to_checkpoint
from mae_jax.errors import UsageError, UserError
from mae_jax.image_size import size_text
from mae_jax.model.config import PRESETS, ModelConfig, preset

DESCRIPTION = """\
Convert Masked Autoencoder weights between PyTorch files and mae_jax.

import (a file -> an orbax checkpoint directory)
  The input is a .pth/.pt/.bin (read with torch.load(weights_only=True): files
  that pickle other Python objects are refused) or a .safetensors file, in
  the authors' layout (facebookresearch/mae models_mae.py, optionally wrapped
  as {"model": ...}) or transformers' ViTMAE layout (current or older key
  names). The layout is detected from the keys. A file without decoder
  weights (e.g. mae_pretrain_vit_base.pth) becomes an encoder-only
  checkpoint. The sizes come from --model and/or explicit size flags (the
  head count cannot be read from the tensor shapes); every tensor is checked
  against them.

export (an orbax checkpoint directory -> a file or a directory)
  A fine-tuning or linear-probe checkpoint exports to the authors'
  models_vit.py layout (timm's VisionTransformer names: fc_norm and head for
  the global-pool classifier; a probe's head is BatchNorm1d + Linear, its
  encoder the one it probed).
  Chosen when --input is a directory (or with --export): a checkpoint
  directory, or a run's workdir (its checkpoints/). The sizes are read
  from the checkpoint's metadata. --layout=authors (the default) writes the
  authors' layout, float32, including the fixed pos_embed /
  decoder_pos_embed buffers, as .pth ({"model": state_dict}) or
  .safetensors; --layout=transformers writes a directory that
  transformers' ViTMAEForPreTraining.from_pretrained loads (ViTMAEModel for
  an encoder-only checkpoint): config.json, model.safetensors and a model
  card (README.md) with the run's metrics and the weights' licence.

licence
  Weights from the authors' release (facebookresearch/mae) are CC BY-NC 4.0
  and stay so after conversion; the importer records it and every export
  carries it (docs/weights.md).
"""

EXAMPLES = """\
examples:
  # the authors' released ViT-B/16 encoder
  python -m mae_jax.convert --input=mae_pretrain_vit_base.pth \\
      --output=/ckpt/mae_b16 --model=B/16
  # a transformers ViTMAEForPreTraining file, scanned layers for training
  python -m mae_jax.convert --input=model.safetensors --output=/ckpt/mae_l16 \\
      --model=L/16 --scan_layers
  # a fine-tuned checkpoint: ignore its classifier head
  python -m mae_jax.convert --input=mae_finetuned_vit_base.pth \\
      --output=/ckpt/ft_b16 --model=B/16 --allow_unused
  # custom sizes (no preset)
  python -m mae_jax.convert --input=tiny.pth --output=/ckpt/tiny --patch_size=4 \\
      --width=64 --depth=2 --heads=4 --decoder_width=32 --decoder_depth=1 \\
      --decoder_heads=4 --image_size=32 --channels=1
  # export back to the authors' layout
  python -m mae_jax.convert --input=/ckpt/mae_b16 --output=mae_b16.pth
  python -m mae_jax.convert --input=/ckpt/mae_b16 --output=mae_b16.safetensors
  # export for transformers (ViTMAEForPreTraining.from_pretrained("hf_b16"))
  python -m mae_jax.convert --input=runs/mae_b16/checkpoints --output=hf_b16 \\
      --layout=transformers
"""

# Size flags that override the preset; without --model the four encoder
# sizes are required (the decoder defaults to the reference 512/8/16).
SIZE_FLAGS = {
  "patch_size": int,
  "width": int,
  "depth": int,
  "heads": int,
  "mlp_ratio": float,
  "decoder_width": int,
  "decoder_depth": int,
  "decoder_heads": int,
  "decoder_mlp_ratio": float,
  "image_size": lambda text: (
    tuple(int(n) for n in text.lower().split("x")) if "x" in text.lower() else int(text)
  ),  # 224, or HxW (224x320)
  "channels": int,
}
REQUIRED_WITHOUT_PRESET = ("patch_size", "width", "depth", "heads")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m mae_jax.convert",
    description=DESCRIPTION,
    epilog=EXAMPLES,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--input", required=True, help="weight file (import) or orbax checkpoint directory (export)"
  )
  parser.add_argument(
    "--output",
    required=True,
    help="new checkpoint directory (import) or .pth/.safetensors file (export)",
  )
  parser.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing --output file or transformers directory (export)",
  )
  parser.add_argument(
    "--export",
    action="store_true",
    help="export a checkpoint (implied when --input is a directory)",
  )
  parser.add_argument(
    "--layout",
    default="authors",
    choices=EXPORT_LAYOUTS,
    help="export only: a file in the authors' layout, or a transformers directory",
  )
  parser.add_argument("--model", help=f"preset: one of {list(PRESETS)} (import only)")
  for name, kind in SIZE_FLAGS.items():
    parser.add_argument(f"--{name}", type=kind, help="overrides the preset (import only)")
  parser.add_argument(
    "--scan_layers", action="store_true", help="store blocks stacked for nn.scan (import only)"
  )
  parser.add_argument(
    "--allow_unused",
    action="store_true",
    help="ignore keys the model has no place for, e.g. a classifier head",
  )
  return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ModelConfig:
  overrides = {name: getattr(args, name) for name in SIZE_FLAGS if getattr(args, name) is not None}
  if args.model:
    return preset(args.model, **overrides)
  missing = [f"--{name}" for name in REQUIRED_WITHOUT_PRESET if name not in overrides]
  if missing:
    raise UsageError(
      f"give --model (one of {list(PRESETS)}) or the sizes explicitly; missing {missing}."
    )
  return ModelConfig(**overrides).validate()


def checkpoint_directory(location: str) -> str:
  """A checkpoint directory, or a run's workdir holding one (as init_from takes)."""
  inside = storage.join(location, "checkpoints")
  return inside if storage.path(inside).is_dir() else location


def refuse_existing_output(output: str, overwrite: bool) -> None:
  target = storage.path(output)
  taken = target.exists() and (not target.is_dir() or any(target.iterdir()))
  if taken and not overwrite:
    raise UsageError(
      f"--output={output!r} already exists: choose a new path, or add --overwrite to replace it."
    )


def main(argv: list[str] | None = None) -> int:
  from mae_jax.log_filters import quiet_library_info

  quiet_library_info()  # orbax's warnings about read-only managers say nothing here
  args = parse_args(argv)
  if not storage.exists(args.input):
    raise UsageError(f"--input={args.input!r} does not exist.")
  if args.export or storage.path(args.input).is_dir():
    if not storage.path(args.input).is_dir():
      raise UsageError(f"--export: {args.input!r} is not a checkpoint directory.")
    refuse_existing_output(args.output, args.overwrite)
    config, what = export_checkpoint(checkpoint_directory(args.input), args.output, args.layout)
    print(
      f"wrote {args.output} ({what}; width {config.width}, depth "
      f"{config.depth}, patch {config.patch_size}, image {size_text(config.image_size)})"
    )
    return 0
  config = config_from_args(args)
  imported = import_to_checkpoint(
    args.input, args.output, config, scan_layers=args.scan_layers, allow_unused=args.allow_unused
  )
  print(
    f"wrote {imported.path} (from the {imported.layout} layout; "
    f"{'scanned' if args.scan_layers else 'per-layer'} blocks)"
  )
  print(licences.import_note(imported.layout))
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except UserError as error:  # a user mistake: the message, not a traceback
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
