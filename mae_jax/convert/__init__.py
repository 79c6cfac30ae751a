"""Weight conversion between PyTorch MAE checkpoints and mae_jax
(`python -m mae_jax.convert --help`); the module map is docs/architecture.md.
"""

from mae_jax.convert.authors import authors_from_params, params_from_authors, tensor_specs
from mae_jax.convert.files import load_state_dict, save_state_dict
from mae_jax.convert.layouts import LAYOUTS, detect_layout, to_authors_layout
from mae_jax.convert.pipeline import (
  export_checkpoint,
  import_to_checkpoint,
  load_params,
  params_from_state_dict,
  read_checkpoint_params,
  save_params,
)

__all__ = [
  "LAYOUTS",
  "authors_from_params",
  "detect_layout",
  "export_checkpoint",
  "import_to_checkpoint",
  "load_params",
  "load_state_dict",
  "params_from_authors",
  "params_from_state_dict",
  "read_checkpoint_params",
  "save_params",
  "save_state_dict",
  "tensor_specs",
  "to_authors_layout",
]
