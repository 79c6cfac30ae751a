"""Reading and writing PyTorch-side weight files as {name: numpy array}.

`.pth` / `.pt` / `.bin` files are read with `torch.load(weights_only=True)`:
a pickle that would construct arbitrary Python objects (and so could run
code) is refused, never unpickled. torch is imported only for these files.
`.safetensors` files need no torch at all.

The authors' released `.pth` files wrap the state dict as `{"model": ...}`;
reading unwraps it, and writing a `.pth` wraps it the same way.

Files are read and written whole, as bytes, through `mae_jax.storage`: a
path may be a gs:// object.
"""

from __future__ import annotations

import io
import pickle
from typing import Mapping

import ml_dtypes  # numpy's bfloat16 (a jax dependency)
import numpy as np

from mae_jax import storage
from mae_jax.errors import CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The file's tensors as numpy arrays of their own dtype (bfloat16 via ml_dtypes)."""
  if path.endswith(SAFETENSORS_SUFFIX):
    return _load_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return _load_torch(path)
  raise CheckpointError(
    f"{path!r}: unknown weight-file type; expected one of {TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)}."
  )


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load

  data = storage.read_bytes(path)
  try:
    return dict(load(data))
  except (TypeError, KeyError) as error:  # numpy has no bfloat16 ("BF16")
    if "bfloat16" not in str(error) and "BF16" not in str(error):
      raise
  from safetensors.torch import load as load_torch  # needs torch

  return {name: _to_numpy(tensor) for name, tensor in load_torch(data).items()}


def _load_torch(path: str) -> dict[str, np.ndarray]:
  import torch  # only .pth files need torch

  try:
    contents = torch.load(
      io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True
    )
  except pickle.UnpicklingError as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    raise CheckpointError(
      f"refusing to load {path!r}: it contains pickled Python objects other "
      "than tensors and plain containers, and unpickling them could run "
      "arbitrary code. (A full training checkpoint also stores e.g. "
      "argparse `args`: re-save only its model state dict.) torch said: "
      f"{first_line}"
    ) from None
  if isinstance(contents, Mapping) and isinstance(contents.get("model"), Mapping):
    contents = contents["model"]
  if not isinstance(contents, Mapping):
    raise CheckpointError(
      f"{path!r} holds a {type(contents).__name__}, not a state dict "
      "(a mapping of names to tensors, possibly under 'model')."
    )
  not_tensors = sorted(k for k, v in contents.items() if not isinstance(v, torch.Tensor))
  if not_tensors:
    raise CheckpointError(f"{path!r}: entries that are not tensors: {not_tensors}.")
  return {name: _to_numpy(tensor) for name, tensor in contents.items()}


def _to_numpy(tensor) -> np.ndarray:
  import torch

  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    # torch cannot hand numpy a bfloat16 array; the float32 detour is exact,
    # and keeping the dtype tells later checks the file's precision.
    return tensor.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
  return tensor.numpy()


def save_state_dict(state: Mapping[str, np.ndarray], path: str) -> None:
  """Writes `.pth` (as `{"model": state}`, like the authors' files) or `.safetensors`."""
  arrays = {name: np.ascontiguousarray(np.asarray(value)) for name, value in state.items()}
  storage.makedirs(storage.parent(path))
  if path.endswith(SAFETENSORS_SUFFIX):
    from safetensors.numpy import save

    storage.write_bytes(path, save(arrays))
  elif path.endswith(TORCH_SUFFIXES):
    import torch

    # torch.from_numpy shares memory and wants a writeable array.
    tensors = {
      name: torch.from_numpy(a if a.flags.writeable else a.copy()) for name, a in arrays.items()
    }
    buffer = io.BytesIO()
    torch.save({"model": tensors}, buffer)
    storage.write_bytes(path, buffer.getvalue())
  else:
    raise CheckpointError(
      f"{path!r}: unknown weight-file type; expected a name ending in "
      f"{TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)}."
    )
