"""Which layout a state dict is in, and renaming transformers' to the authors'.

Three layouts of the same model are in circulation:

  authors           facebookresearch/mae `models_mae.py`: `patch_embed.proj`,
                    `blocks.{i}.attn.qkv` (one fused (3D, D) Linear), ...
  transformers      `ViTMAEForPreTraining` today: `vit.layers.{i}.attention.
                    {q,k,v,o}_proj`, `layernorm_before/after`, `mlp.fc1/fc2`.
  transformers_old  the same model as older transformers saved it, still the
                    layout of checkpoints on model hubs:
                    `vit.encoder.layer.{i}.attention.attention.query`,
                    `attention.output.dense`, `intermediate.dense`,
                    `output.dense`.

Everything is converted to the authors' layout first; `authors.py` then maps
that one layout to mae_jax parameters. The `vit.` prefix is optional
(an encoder-only `ViTMAEModel` saves its keys without it). Export runs the
same tables backwards (`from_authors_layout`): the authors' layout, then
transformers' current names, q, k and v split again.
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple

import numpy as np

from mae_jax.errors import CheckpointError, UsageError

AUTHORS = "authors"
TRANSFORMERS = "transformers"
TRANSFORMERS_OLD = "transformers_old"
LAYOUTS = (AUTHORS, TRANSFORMERS, TRANSFORMERS_OLD)

_AUTHORS_MARKER = "patch_embed.proj.weight"
_TRANSFORMERS_MARKER = "embeddings.patch_embeddings.projection.weight"


class Renamed(NamedTuple):
  state: dict[str, np.ndarray]  # in the authors' layout
  origin: dict[str, str]  # authors' key -> the key(s) it came from in the file
  layout: str  # the file's layout

  def file_key(self, key: str) -> str:
    """The file's name for an authors' key, present or not (for messages)."""
    return self.origin.get(key) or file_key_for(key, self.layout)


def _strip_vit_prefix(key: str) -> str:
  return key[len("vit.") :] if key.startswith("vit.") else key


def detect_layout(keys) -> str:
  """One of LAYOUTS, from the names alone; CheckpointError if none fits."""
  keys = set(keys)
  if _AUTHORS_MARKER in keys:
    return AUTHORS
  stripped = {_strip_vit_prefix(k) for k in keys}
  if _TRANSFORMERS_MARKER in stripped:
    old = any(k.startswith("encoder.layer.") or ".attention.attention." in k for k in stripped)
    return TRANSFORMERS_OLD if old else TRANSFORMERS
  raise CheckpointError(
    "cannot tell which layout this state dict is in: expected the key "
    f"{_AUTHORS_MARKER!r} (facebookresearch/mae) or 'vit.{_TRANSFORMERS_MARKER}' "
    f"(transformers ViTMAE). First keys found: {sorted(keys)[:8]}."
  )


# Older transformers -> current transformers, applied in order (the
# attention output must be renamed before the generic `output.dense`).
_OLD_TO_CURRENT = (
  (r"^encoder\.layer\.", "layers."),
  (r"\.attention\.attention\.query\.", ".attention.q_proj."),
  (r"\.attention\.attention\.key\.", ".attention.k_proj."),
  (r"\.attention\.attention\.value\.", ".attention.v_proj."),
  (r"\.attention\.output\.dense\.", ".attention.o_proj."),
  (r"\.intermediate\.dense\.", ".mlp.fc1."),
  (r"\.output\.dense\.", ".mlp.fc2."),
)

# Current transformers (without `vit.`) -> authors. q/k/v land in a
# temporary `attn.qkv.{q,k,v}` and are fused afterwards.
_CURRENT_TO_AUTHORS = (
  (r"^embeddings\.cls_token$", "cls_token"),
  (r"^embeddings\.position_embeddings$", "pos_embed"),
  (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
  (r"^layers\.(\d+)\.", r"blocks.\1."),
  (r"^layernorm\.", "norm."),
  (r"^decoder\.decoder_layers\.(\d+)\.", r"decoder_blocks.\1."),
  (r"^decoder\.(decoder_embed|mask_token|decoder_pos_embed|decoder_norm|decoder_pred)", r"\1"),
  (r"\.layernorm_before\.", ".norm1."),
  (r"\.layernorm_after\.", ".norm2."),
  (r"\.attention\.o_proj\.", ".attn.proj."),
  (r"\.attention\.([qkv])_proj\.", r".attn.qkv.\1."),
)

_SPLIT_QKV = re.compile(r"^(.*\.attn\.qkv)\.([qkv])\.(weight|bias)$")


def _rename(key: str, rules) -> str:
  for pattern, replacement in rules:
    key = re.sub(pattern, replacement, key)
  return key


def to_authors_layout(state: Mapping[str, np.ndarray], layout: str | None = None) -> Renamed:
  """Renames (and fuses q, k, v of) a state dict into the authors' layout.

  Keys that no rule knows (e.g. a classifier head) pass through under their
  own name, so the caller can report them as unexpected.
  """
  layout = layout or detect_layout(state)
  if layout not in LAYOUTS:
    raise UsageError(f"layout={layout!r}: must be one of {LAYOUTS}.")
  if layout == AUTHORS:
    return Renamed(dict(state), {k: k for k in state}, layout)

  renamed: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  # (fused key, "weight"/"bias") -> {"q": (file key, array), ...}
  split_qkv: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]] = {}
  for file_key, value in state.items():
    key = _strip_vit_prefix(file_key)
    if layout == TRANSFORMERS_OLD:
      key = _rename(key, _OLD_TO_CURRENT)
    key = _rename(key, _CURRENT_TO_AUTHORS)
    split = _SPLIT_QKV.match(key)
    if split:
      fused, part, kind = split.groups()
      split_qkv.setdefault((fused, kind), {})[part] = (file_key, value)
      continue
    renamed[key] = value
    origin[key] = file_key

  for (fused, kind), parts in split_qkv.items():
    key = f"{fused}.{kind}"
    missing = [_sibling_key(parts, part, layout) for part in "qkv" if part not in parts]
    if missing:
      found = sorted(file_key for file_key, _ in parts.values())
      raise CheckpointError(
        f"missing key(s) {missing}: q, k and v are fused into the authors' "
        f"{key!r} and all three are needed (found {found})."
      )
    shapes = {part: tuple(np.shape(parts[part][1])) for part in "qkv"}
    if len(set(shapes.values())) != 1:
      raise CheckpointError(
        f"{key!r}: q, k and v have different shapes "
        + ", ".join(f"{parts[p][0]} {shapes[p]}" for p in "qkv")
        + "."
      )
    # The fused Linear's output features are [q (all heads), k, v].
    renamed[key] = np.concatenate([np.asarray(parts[p][1]) for p in "qkv"], axis=0)
    origin[key] = " + ".join(parts[p][0] for p in "qkv")
  return Renamed(renamed, origin, layout)


# Authors -> current transformers, only to name a missing key in messages.
_AUTHORS_TO_CURRENT = (
  (r"^cls_token$", "vit.embeddings.cls_token"),
  (r"^pos_embed$", "vit.embeddings.position_embeddings"),
  (r"^patch_embed\.proj\.", "vit.embeddings.patch_embeddings.projection."),
  (r"^blocks\.(\d+)\.", r"vit.layers.\1."),
  (r"^norm\.", "vit.layernorm."),
  (r"^decoder_blocks\.(\d+)\.", r"decoder.decoder_layers.\1."),
  (r"^(decoder_embed|mask_token|decoder_pos_embed|decoder_norm|decoder_pred)", r"decoder.\1"),
  (r"\.norm1\.", ".layernorm_before."),
  (r"\.norm2\.", ".layernorm_after."),
  (r"\.attn\.proj\.", ".attention.o_proj."),
  (r"\.attn\.qkv\.", ".attention.{q,k,v}_proj."),
)
_CURRENT_TO_OLD = (
  (r"^vit\.layers\.", "vit.encoder.layer."),
  (r"\.attention\.\{q,k,v\}_proj\.", ".attention.attention.{query,key,value}."),
  (r"\.attention\.o_proj\.", ".attention.output.dense."),
  (r"\.mlp\.fc1\.", ".intermediate.dense."),
  (r"\.mlp\.fc2\.", ".output.dense."),
)


def from_authors_layout(
  state: Mapping[str, np.ndarray], *, encoder_only: bool = False
) -> dict[str, np.ndarray]:
  """An authors' state dict -> transformers' current ViTMAE names (what
  `ViTMAEForPreTraining.from_pretrained` loads; `encoder_only`: a
  `ViTMAEModel`'s, without the `vit.` prefix). The fused qkv is split into
  q, k and v, its output features being [q (all heads), k, v]."""
  out: dict[str, np.ndarray] = {}
  for key, value in state.items():
    name = _rename(key, _AUTHORS_TO_CURRENT)
    if encoder_only:
      name = _strip_vit_prefix(name)
    if ".attention.{q,k,v}_proj." in name:
      for part, piece in zip("qkv", np.split(np.asarray(value), 3, axis=0)):
        out[name.replace("{q,k,v}", part)] = piece
    else:
      out[name] = value
  return out


def file_key_for(key: str, layout: str) -> str:
  """The name an authors' key has in a file of `layout` (with the `vit.` prefix)."""
  if layout == AUTHORS:
    return key
  key = _rename(key, _AUTHORS_TO_CURRENT)
  return _rename(key, _CURRENT_TO_OLD) if layout == TRANSFORMERS_OLD else key


# How each of q/k/v is spelled in a file of either transformers layout.
_PART_NAMES = {
  TRANSFORMERS: {"q": "q_proj", "k": "k_proj", "v": "v_proj"},
  TRANSFORMERS_OLD: {"q": "query", "k": "key", "v": "value"},
}


def _sibling_key(parts: Mapping[str, tuple[str, np.ndarray]], wanted: str, layout: str) -> str:
  """The file's name for the `wanted` part of q/k/v, from a part that is present."""
  part, (file_key, _) = next(iter(parts.items()))
  names = _PART_NAMES[layout]
  return file_key.replace(f".{names[part]}.", f".{names[wanted]}.")
