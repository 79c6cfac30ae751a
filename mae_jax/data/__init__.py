"""Input pipeline of mae_jax: sources, transforms, per-host Grain batches.

Its modules are listed in docs/architecture.md, the one module map.

Typical use:

  config = default_data_config()            # bundled digits, 32x32x1
  validate_data_config(config)              # raises DataConfigError
  sizes, num_classes = dataset_info(config)
  batches = make_iterator(config, split=config.train_split,
                          global_batch_size=256, train=True, seed=0)
"""

from mae_jax.data.config import (
  IMAGENET_MEAN,
  IMAGENET_STD,
  default_data_config,
  imagenet_data_config,
)
from mae_jax.data.digits import MEAN as DIGITS_MEAN
from mae_jax.data.digits import STD as DIGITS_STD
from mae_jax.data.input_pipeline import make_dataset, make_iterator
from mae_jax.data.sources import SOURCES, DataConfigError, dataset_info, validate_data_config

__all__ = [
  "DIGITS_MEAN",
  "DIGITS_STD",
  "IMAGENET_MEAN",
  "IMAGENET_STD",
  "SOURCES",
  "DataConfigError",
  "dataset_info",
  "default_data_config",
  "imagenet_data_config",
  "make_dataset",
  "make_iterator",
  "validate_data_config",
]
