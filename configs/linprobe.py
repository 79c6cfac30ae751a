r"""Linear-probe configs (config.job = "linprobe"): a frozen pretrained encoder,
BatchNorm (no affine) + Linear trained by LARS, as the reference main_linprobe.py.

  python -m mae_jax.main --config=configs/linprobe.py:digits \
    --workdir=runs/digits_linprobe --config.init_from=runs/digits
  python -m mae_jax.main --config=configs/linprobe.py:vit_large \
    --workdir=gs://BUCKET/mae/vit_large_linprobe --config.init_from=gs://BUCKET/mae/vit_large \
    --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Presets:
  digits      the probe of `configs/pretrain.py:digits`: features of the
              resized 32x32 digits, computed once (cache_features, no
              augmentation), 90 epochs of batch 128. The learning rate is
              the reference's per-step value (0.1 * 16384 / 256 = 6.4, i.e.
              base_lr 12.8 at batch 128): LARS moves each weight matrix by a
              fixed fraction of its norm per step, so the reference's base
              lr at a 128x smaller batch would barely move the head.
  vit_base    ImageNet-1k, reference recipe: batch 16384, base lr 0.1,
  vit_large   10 warm-up epochs then cosine, 90 epochs (B) or 50 (L, H);
  vit_huge    RandomResizedCrop + flip; eval resize 256 + center crop 224.

Options: runlocal (an ImageNet preset's architecture on the bundled digits,
batch 8, 10 steps), epochs=N, batch=N. Baselines: --config.baseline=random_init
(the architecture at initialisation) or raw_pixels (the flattened image),
with no init_from.
"""

import ml_collections

from configs import pretrain
from configs.common import base_eval_config, model_config_dict, parse_arg
from mae_jax.data import DIGITS_MEAN, DIGITS_STD, default_data_config, imagenet_data_config

PRESETS = ("digits", "vit_base", "vit_large", "vit_huge")
OPTIONS = {"runlocal": False, "epochs": -1.0, "batch": -1}
EPOCHS = {"vit_base": 90.0, "vit_large": 50.0, "vit_huge": 50.0}


def lars_optimizer(base_lr: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      name="lars",
      base_lr=base_lr,
      min_lr=0.0,
      momentum=0.9,
      trust_coefficient=0.001,
      weight_decay=0.0,
    )
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, options = parse_arg(arg, default_preset="digits", presets=PRESETS, known_options=OPTIONS)
  config = base_eval_config("linprobe")
  config.preset = name
  config.head_init_std = 0.01
  config.feature = "cls"
  config.warmup_epochs = 10.0
  if name == "digits":
    config.model = pretrain.get_config("digits").model
    config.data = default_data_config(image_size=32, channels=1, random_resized_crop=False)
    config.global_batch_size = 128
    config.num_epochs = 90.0
    config.optimizer = lars_optimizer(base_lr=12.8)
    config.cache_features = True
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 1
  else:
    config.model = model_config_dict(name)
    config.data = imagenet_data_config(crop_scale=(0.08, 1.0))
    config.global_batch_size = 16384
    config.eval_batch_size = 1024
    config.num_epochs = EPOCHS[name]
    config.optimizer = lars_optimizer(base_lr=0.1)
    config.log_every_steps = 20
    config.eval_every_steps = 780  # about 10 epochs of 78 steps
    config.checkpoint_every_steps = 200
    if options["runlocal"]:
      runlocal(config)
  if options["epochs"] > 0:
    config.num_epochs = float(options["epochs"])
  if options["batch"] > 0:
    config.global_batch_size = int(options["batch"])
  return config


def runlocal(config: ml_collections.ConfigDict) -> None:
  """The preset's architecture on the bundled digits, for a laptop smoke test."""
  config.data = default_data_config(
    image_size=config.model.image_size, channels=3, mean=DIGITS_MEAN * 3, std=DIGITS_STD * 3
  )
  config.global_batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 10
  config.warmup_epochs = 0.0
  config.log_every_steps = 1
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 5
