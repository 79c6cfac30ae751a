"""mae_jax: Masked Autoencoders (He et al., 2021) in JAX/Flax.

The package map is docs/architecture.md. Importing it sets one process-wide
default, below.
"""

import os
import sys

# Cloud Storage paths (gs://) go through etils.epath: in orbax, in TFDS's
# data_source and in this package. epath hands them to TensorFlow's file
# system whenever TensorFlow is installed at all, which would import it
# (seconds, a gigabyte of memory) into any training process that touches a
# bucket. gcsfs (requirements.txt) serves them without TensorFlow. Set
# EPATH_USE_TF=1 before starting to get epath's own default back.
os.environ.setdefault("EPATH_USE_TF", "false")

# gcsfs keeps directory listings in memory by default, so a process would not
# see checkpoint steps, metrics or lease objects that another process (or
# orbax's own background thread) wrote after its first look. Listings are
# read fresh (fsspec reads FSSPEC_GS_* when it is imported; conf, if it was).
os.environ.setdefault("FSSPEC_GS_USE_LISTINGS_CACHE", "false")
if "fsspec" in sys.modules:
  sys.modules["fsspec"].config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
