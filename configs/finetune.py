r"""Fine-tuning configs (config.job = "finetune"), as the reference main_finetune.py.

  python -m mae_jax.main --config=configs/finetune.py:digits \
    --workdir=runs/digits_finetune --config.init_from=runs/digits
  python -m mae_jax.main --config=configs/finetune.py:vit_base \
    --workdir=gs://BUCKET/mae/vit_base_finetune --config.init_from=gs://BUCKET/mae/vit_base \
    --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Every preset: AdamW (0.9, 0.999), weight decay 0.05 (kernels only),
warm-up then cosine to 1e-6, Mixup 0.8 / CutMix 1.0 (switch 0.5), label
smoothing 0.1, RandAugment (2 ops, magnitude 9, std 0.5), random erasing
0.25, global pool + fc_norm, head init std 2e-5.

Presets:
  vit_base    batch 1024, 100 epochs (5 warm-up), base lr 5e-4, layer decay 0.65, drop path 0.1
  vit_large   batch 1024, 50 epochs (5 warm-up), base lr 1e-3, layer decay 0.75, drop path 0.2
  vit_huge    batch 1024, 50 epochs (5 warm-up), base lr 1e-3, layer decay 0.75, drop path 0.3
  digits      the ViT of `configs/pretrain.py:digits` with the ViT-B recipe,
              shortened to fit a CPU: 15 epochs of batch 128 (1 warm-up),
              base lr 5e-3 (10x the reference, as the digits pretraining
              preset: a short schedule on small data), the digits
              pretraining's crop scale (0.2-1) and no flip.

Options: runlocal, epochs=N, batch=N, scratch (= --config.baseline=random_init
--config.optimizer.layer_decay=1.0: training from scratch, where
layer-wise decay has nothing to preserve).

Gradient accumulation: --config.grad_accum_steps=N (default 1) splits each
global batch into N micro-batches and averages their gradients, for a
smaller per-chip batch with the same update; the batch is mixed (Mixup /
CutMix) whole before the split. global_batch_size stays the effective
batch, the one the lr scales with (base_lr * global_batch_size / 256), as
the reference's eff_batch = batch * accum_iter * GPUs: keep it and raise N
to fit in memory. It must be divisible by N, and each micro-batch by the
data-parallel devices.
"""

import ml_collections

from configs import pretrain
from configs.common import base_eval_config, model_config_dict, parse_arg
from configs.linprobe import runlocal
from mae_jax.data import default_data_config, imagenet_data_config

PRESETS = ("digits", "vit_base", "vit_large", "vit_huge")
OPTIONS = {"runlocal": False, "epochs": -1.0, "batch": -1, "scratch": False}
# preset: (epochs, base lr, layer decay, drop path)
RECIPES = {
  "vit_base": (100.0, 5e-4, 0.65, 0.1),
  "vit_large": (50.0, 1e-3, 0.75, 0.2),
  "vit_huge": (50.0, 1e-3, 0.75, 0.3),
  "digits": (15.0, 5e-3, 0.65, 0.1),
}
FINETUNE_AUGMENTATION = dict(
  randaugment_ops=2, randaugment_magnitude=9.0, randaugment_magnitude_std=0.5, random_erasing=0.25
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, options = parse_arg(arg, default_preset="digits", presets=PRESETS, known_options=OPTIONS)
  epochs, base_lr, layer_decay, drop_path = RECIPES[name]
  config = base_eval_config("finetune")
  config.preset = name
  config.feature = "pool"
  config.head_init_std = 2e-5
  config.optimizer = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=base_lr,
      min_lr=1e-6,
      b1=0.9,
      b2=0.999,
      weight_decay=0.05,
      layer_decay=layer_decay,
    )
  )
  config.num_epochs = epochs
  config.warmup_epochs = 5.0
  config.mixup, config.cutmix, config.mixup_switch_prob = 0.8, 1.0, 0.5
  config.label_smoothing = 0.1
  if name == "digits":
    config.model = pretrain.get_config("digits").model
    config.data = default_data_config(image_size=32, channels=1, **FINETUNE_AUGMENTATION)
    config.global_batch_size = 128
    config.warmup_epochs = 1.0
    config.log_every_steps = 22
    config.eval_every_steps = 55
    config.checkpoint_every_steps = 200
    config.keep_checkpoints = 1
  else:
    config.model = model_config_dict(name)
    config.data = imagenet_data_config(crop_scale=(0.08, 1.0), **FINETUNE_AUGMENTATION)
    config.global_batch_size = 1024
    config.eval_batch_size = 1024
    config.log_every_steps = 100
    config.eval_every_steps = 1250  # one epoch
    config.checkpoint_every_steps = 1250
    if options["runlocal"]:
      runlocal(config)
  config.model.drop_path_rate = drop_path
  if options["scratch"]:
    config.baseline = "random_init"
    config.optimizer.layer_decay = 1.0
  if options["epochs"] > 0:
    config.num_epochs = float(options["epochs"])
  if options["batch"] > 0:
    config.global_batch_size = int(options["batch"])
  return config
