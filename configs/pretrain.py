r"""MAE pretraining configs.

Presets (the text after the colon; options follow, comma-separated):

  digits      the bundled default: scikit-learn's 1,797 handwritten digits
              upscaled to 32x32, a small ViT (width 192, depth 6, patch 4).
              Runs on a laptop CPU in a few minutes:
                python -m mae_jax.main --config=configs/pretrain.py:digits \
                  --workdir=runs/digits
  vit_base    MAE ViT-B/16 on ImageNet-1k, reference recipe (batch 4096,
  vit_large   800 epochs (epochs=1600 for the released weights), 40 warm-up
  vit_huge    epochs, base lr 1.5e-4, norm-pix loss, mask ratio 0.75):
                python -m mae_jax.main --config=configs/pretrain.py:vit_large \
                  --workdir=gs://BUCKET/mae/vit_large \
                  --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Options:
  runlocal      shrink an ImageNet preset for a laptop smoke test: the bundled
                digits at the preset's image size and 3 channels, batch 8,
                10 steps (the architecture stays the preset's).
  epochs=N      number of pretraining epochs.
  batch=N       global batch size (the learning rate follows base_lr*N/256).

The k-NN monitor (k-NN top-1/top-5 of the eval split against the train
split, on the current encoder; mae_jax.evaluators.knn) runs every
`knn_every_steps` steps and at the last: 220 for digits, 0 (off) for the
ImageNet presets, where each run is a forward pass over both splits. Turn
it on with e.g. --config.knn_every_steps=5000 --config.knn_train_batches=50.

Any field can also be overridden on the command line, e.g.
  --config.global_batch_size=1024 --config.grad_accum_steps=4
  --config.model.dtype=bfloat16 --config.model.remat_policy=dots
  --config.mesh.fsdp=8 --config.data.data_dir=gs://BUCKET/tfds
"""

import ml_collections

from configs.common import base_training_config, model_config_dict, parse_arg
from mae_jax.data import DIGITS_MEAN, DIGITS_STD, default_data_config, imagenet_data_config

PRESETS = ("digits", "vit_base", "vit_large", "vit_huge")
OPTIONS = {"runlocal": False, "epochs": -1.0, "batch": -1}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, options = parse_arg(arg, default_preset="digits", presets=PRESETS, known_options=OPTIONS)
  config = base_training_config()
  config.preset = name
  if name == "digits":
    _digits(config)
  else:
    _imagenet(config, name, runlocal=options["runlocal"])
  if options["epochs"] > 0:
    config.num_epochs = float(options["epochs"])
  if options["batch"] > 0:
    config.global_batch_size = int(options["batch"])
  return config


def _digits(config: ml_collections.ConfigDict) -> None:
  # A small ViT that learns something visible in a few CPU minutes: 8x8
  # scans upscaled to 32x32, patch 4 -> 64 patches, 16 visible at ratio 0.75.
  config.model = model_config_dict(
    "custom",
    image_size=32,
    patch_size=4,
    channels=1,
    width=192,
    depth=6,
    heads=3,
    decoder_width=128,
    decoder_depth=2,
    decoder_heads=4,
    mask_ratio=0.75,
    norm_pix_loss=True,
  )
  config.data = default_data_config(image_size=32, channels=1)
  config.global_batch_size = 128
  config.num_epochs = 40.0  # 1,497 training images: 11 steps an epoch
  config.warmup_epochs = 5.0
  config.optimizer.base_lr = 1.5e-3  # small data, short schedule: a higher lr
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.log_every_steps = 20
  config.eval_every_steps = 200
  # k-NN top-1 at mid-run and at the end: ~5 s each, ~5 % of the run.
  config.knn_every_steps = 220


def _imagenet(config: ml_collections.ConfigDict, name: str, *, runlocal: bool) -> None:
  config.model = model_config_dict(name, norm_pix_loss=True, mask_ratio=0.75)
  config.data = imagenet_data_config()
  if runlocal:
    config.data = default_data_config(
      image_size=config.model.image_size, channels=3, mean=DIGITS_MEAN * 3, std=DIGITS_STD * 3
    )
    config.global_batch_size = 8
    config.num_train_steps = 10
    config.warmup_epochs = 0.0
    config.log_every_steps = 1
    config.eval_every_steps = 10
    config.eval_batches = 2
    config.checkpoint_every_steps = 5
    config.num_reconstructions = 4
