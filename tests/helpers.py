"""What several test files share: tiny configs, checkpoint readers, streams
with a bad batch, the subprocess environment."""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

import jax
import numpy as np
import optax

from configs import pretrain as pretrain_config
from mae_jax import storage
from mae_jax.core import checkpointing
from mae_jax.core.batches import InputSettings, train_split_batches
from mae_jax.core.state import create_state
from mae_jax.model.config import TINY, ModelConfig
from mae_jax.model.mae import MaskedAutoencoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def with_sigint(command: list[str], *, ignored: bool = False) -> list[str]:
  """`command`, started with SIGINT at its default (as a terminal gives it)
  or ignored (as a background job gets it), whatever this process inherited.

  A process started with SIGINT ignored (`cmd &` in a script, nohup, some CI
  runners) passes the ignore on to its children, and neither mae_jax (which
  keeps an inherited ignore on purpose) nor bash can then catch it: a signal
  test gives its child the disposition it tests. A Python stub sets it and
  execs the command (the pid stays); no `preexec_fn`, since running Python
  in a child forked from a process with JAX's threads can deadlock."""
  disposition = "SIG_IGN" if ignored else "SIG_DFL"
  stub = (
    f"import os, signal, sys; signal.signal(signal.SIGINT, signal.{disposition}); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
  )
  return [sys.executable, "-c", stub, *command]


def environment(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


# The tiny model preset (mae_jax.model.config.TINY): every test's model,
# as config fields and as dotted --config overrides.
TINY_MODEL = dict(TINY)
TINY_OVERRIDES = {
  **{f"model.{field}": value for field, value in TINY.items()},
  "data.image_size": TINY["image_size"],
}


def tiny_model_config(**overrides) -> ModelConfig:
  """The tiny preset on the digits' one grey channel."""
  return ModelConfig(**{**TINY, "channels": 1, **overrides}).validate()


def tiny_config(**overrides):
  config = pretrain_config.get_config("digits")
  config.model.update(TINY_MODEL)
  config.data.image_size = TINY["image_size"]
  config.global_batch_size = 16
  config.num_train_steps = 6
  config.warmup_epochs = 0.1
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.eval_batches = 2
  config.checkpoint_every_steps = 3
  config.keep_checkpoints = 5
  config.num_reconstructions = 3
  config.progress_bar = "off"
  config.knn_every_steps = 0  # the k-NN monitor's own tests: test_knn_monitor.py
  for key, value in overrides.items():
    config[key] = value
  return config


def apply_changes(config, change: dict):
  """`config` with `change`'s fields set; dict values update sub-configs."""
  for key, value in change.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def final_params(workdir: str, step: int):
  metadata = checkpointing.read_metadata(storage.join(workdir, "checkpoints"), step)
  model = MaskedAutoencoder(ModelConfig(**metadata["model"]))
  abstract = jax.eval_shape(
    lambda k: create_state(model, optax.identity(), k), jax.random.key(0)
  ).params
  restored = checkpointing.restore_state(
    storage.join(workdir, "checkpoints"), {"params": abstract}, step=step
  )
  return restored["params"]


def without_key_bias(path, a, b):
  """The key bias has an exactly-zero gradient (softmax ignores a constant
  added to every key), so what Adam makes of its rounding noise differs
  between reduction orders; every other parameter must agree."""
  if "qkv" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['bias']"):
    return np.asarray(a)[[0, 2]], np.asarray(b)[[0, 2]]
  return a, b


def train_stream(config, start_step: int) -> Iterator[dict]:
  """This host's training batches of `config` from `start_step`, as the jobs read them."""
  return train_split_batches(InputSettings.from_config(config), start_step)


def nan_batch_at(config, bad_batch_index: int) -> Callable[[int], Iterator[dict]]:
  """A `train_batches` factory: config's training stream with NaN images in
  one batch (global batch `bad_batch_index`, counted from step 0). The
  pipeline's images are uint8, which has no NaN: that batch carries float32
  images, which the steps take as already normalised."""

  def batches(start_step: int) -> Iterator[dict]:
    for index, batch in enumerate(train_stream(config, start_step), start=start_step):
      if index == bad_batch_index:
        batch = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))
      yield batch

  return batches


def main_command(workdir, *overrides: str) -> list[str]:
  """`python -m mae_jax.main` pretraining the tiny model on the digits, quietly;
  `overrides` are more --config.X=V flags."""
  tiny = dict(
    **TINY_OVERRIDES,
    global_batch_size=16,
    warmup_epochs=0.5,
    log_every_steps=5,
    eval_batches=1,
    num_reconstructions=2,
    progress_bar="off",
    knn_every_steps=0,
  )
  flags = [f"--config.{key}={value}" for key, value in tiny.items()]
  return [
    sys.executable,
    "-m",
    "mae_jax.main",
    "--config=configs/pretrain.py:digits",
    f"--workdir={workdir}",
    *flags,
    *overrides,
  ]
