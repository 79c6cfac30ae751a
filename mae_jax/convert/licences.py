"""The licence of weights: recorded when they are imported, followed when they are exported.

mae_jax's code is Apache-2.0. The authors' code and released weights
(facebookresearch/mae: mae_pretrain_vit_*.pth, mae_finetuned_vit_*.pth,
mae_visualize_vit_*.pth) are CC BY-NC 4.0, and converting them changes
nothing: an orbax checkpoint made from them, a run initialised from one
(`init_from`), and a file exported from either stay under that licence.

The importer cannot tell the authors' files from other files in their
layout, so it records what the layout suggests (`IMPORT_LICENCES`) and says
so; the exporter follows a checkpoint's `init_from` chain back to such a
record (`licence_of`). A run trained from scratch has no record: its
weights' licence is its owner's to choose (the training data's terms apply).
"""

from __future__ import annotations

AUTHORS_LICENCE = {
  "spdx": "cc-by-nc-4.0",
  "text": (
    "CC BY-NC 4.0: weights from the authors' release (facebookresearch/mae) keep their "
    "licence after conversion (non-commercial use, with attribution)"
  ),
}
TRANSFORMERS_LICENCE = {
  "spdx": "other",
  "text": (
    "the licence of the file's source: the Hub's facebook/vit-mae-* weights were "
    "converted from the authors' release, which is CC BY-NC 4.0"
  ),
}
# What the importer records, by the layout it read.
IMPORT_LICENCES = {
  "authors": AUTHORS_LICENCE,
  "transformers": TRANSFORMERS_LICENCE,
  "transformers_old": TRANSFORMERS_LICENCE,
}
NOT_RECORDED = {
  "spdx": None,
  "text": (
    "not recorded: trained by mae_jax (Apache-2.0 code) without imported weights; the "
    "weights' licence is their owner's to choose, and the training data's terms apply"
  ),
}


def import_note(layout: str) -> str:
  """One line the importer prints about the licence it recorded."""
  return (
    f"licence: {IMPORT_LICENCES[layout]['text']}. Weights from the authors' release "
    "(mae_pretrain_vit_*.pth and the other files of facebookresearch/mae) are CC BY-NC 4.0 "
    "and stay so after conversion."
  )


def licence_of(metadata: dict, depth: int = 8) -> dict:
  """The licence recorded in a checkpoint's metadata, or in the checkpoint
  its run was initialised from (its `config.init_from`), followed back."""
  if "licence" in metadata:
    return metadata["licence"]
  init_from = (metadata.get("config") or {}).get("init_from") or ""
  if init_from and depth > 0:
    from mae_jax.core import pretrained

    try:
      found = pretrained.locate(init_from)
    except Exception:  # moved or deleted since: say so rather than guess
      return {
        "spdx": "other",
        "text": f"unknown: the weights it started from ({init_from}) are gone",
      }
    return licence_of(found.metadata, depth - 1)
  return NOT_RECORDED
