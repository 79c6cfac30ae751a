"""mae_jax: Masked Autoencoders (He et al., 2021) in JAX/Flax.

The package map is docs/architecture.md. Importing it sets one process-wide
default, below.
"""

import os

# Cloud Storage paths (gs://) go through etils.epath: in orbax, in TFDS's
# data_source and in this package. epath hands them to TensorFlow's file
# system whenever TensorFlow is installed at all, which would import it
# (seconds, a gigabyte of memory) into any training process that touches a
# bucket. gcsfs (requirements.txt) serves them without TensorFlow. Set
# EPATH_USE_TF=1 before starting to get epath's own default back.
os.environ.setdefault("EPATH_USE_TF", "false")
