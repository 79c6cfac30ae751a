r"""k-NN configs (config.job = "knn"): cosine k-NN (k 20, temperature 0.07) on
frozen features of the train split, evaluated on the eval split.

  python -m mae_jax.main --config=configs/knn.py:digits \
    --workdir=runs/digits_knn --config.init_from=runs/digits

Presets: digits (the ViT of configs/pretrain.py:digits), vit_base,
vit_large, vit_huge (ImageNet-1k; eval transform for both splits; set
--config.knn_train_batches=N to use only N batches of the train split).
Options: runlocal. Baselines: --config.baseline=random_init or raw_pixels.
"""

import ml_collections

from configs import pretrain
from configs.common import base_eval_config, model_config_dict, parse_arg
from configs.linprobe import runlocal
from mae_jax.data import default_data_config, imagenet_data_config

PRESETS = ("digits", "vit_base", "vit_large", "vit_huge")
OPTIONS = {"runlocal": False}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, options = parse_arg(arg, default_preset="digits", presets=PRESETS, known_options=OPTIONS)
  config = base_eval_config("knn")
  config.preset = name
  config.feature = "cls"
  if name == "digits":
    config.model = pretrain.get_config("digits").model
    config.data = default_data_config(image_size=32, channels=1, random_resized_crop=False)
    config.eval_batch_size = 128
  else:
    config.model = model_config_dict(name)
    config.data = imagenet_data_config()
    config.eval_batch_size = 1024
    if options["runlocal"]:
      runlocal(config)
  return config
