"""The things the benchmarks time: one mae_jax train step, one transformers
PyTorch ViTMAE train step, and a large matmul (the machine's own peak).

Each `run()` executes exactly one step, waits for it to finish and returns
its wall time in seconds, so that `common.interleave` can alternate them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from mae_jax.core import optim, sharding
from mae_jax.core.pixels import PixelNormalization
from mae_jax.jobs.pretrain_step import build_pretraining_step
from mae_jax.model.config import ModelConfig

# The reference recipe's AdamW; the learning rate does not change the cost.
ADAMW = dict(b1=0.9, b2=0.95, weight_decay=0.05)
LEARNING_RATE = 1.5e-4


def random_images(cfg: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
  """Normalised float32 images (what PyTorch's ViTMAE takes)."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, cfg.image_size, cfg.image_size, cfg.channels)).astype(np.float32)


def random_pixels(cfg: ModelConfig, batch: int, seed: int = 0) -> np.ndarray:
  """uint8 images (what mae_jax's step takes: it normalises them itself)."""
  rng = np.random.default_rng(seed)
  shape = (batch, cfg.image_size, cfg.image_size, cfg.channels)
  return rng.integers(0, 256, size=shape, dtype=np.uint8)


def typical_normalization(channels: int) -> PixelNormalization:
  """A dataset normalisation for benchmarks: its values do not change the cost."""
  return PixelNormalization((0.5,) * channels, (0.25,) * channels)


# ----------------------------------------------------------- mae_jax step --


class MaeStep:
  """The real pretraining step (the step engine's program, AdamW, donated state),
  sharded over `mesh` exactly as `mae_jax.jobs.pretrain` does it.

  Compilation happens in the constructor and is timed apart (`lower_s`,
  `compile_s`); `compiler_options` are XLA debug options for this program
  only (e.g. {"xla_cpu_experimental_ynn_fusion_type": "dot"}), so variants
  can be interleaved in one process. The batch stays on the devices, so `run` times compute only
  (the input pipeline has its own benchmark).
  """

  job = "pretrain"  # whose model FLOPs count (mae_jax.model.flops)

  def __init__(
    self,
    cfg: ModelConfig,
    batch: int,
    *,
    mesh: dict[str, int] | None = None,
    grad_accum_steps: int = 1,
    donate: bool = True,
    seed: int = 0,
    execute: bool = True,
    compiler_options: dict[str, Any] | None = None,
    optimizer: tuple[optax.Schedule, optax.GradientTransformation] | None = None,
    pixels: PixelNormalization | None = None,
  ):
    self.cfg, self.batch_size = cfg.validate(), batch
    mesh_shape = mesh or {"data": 1, "fsdp": 1, "tensor": 1}
    count = math.prod(mesh_shape.values())
    if count > jax.device_count():
      raise ValueError(f"mesh {mesh_shape} needs {count} devices; {jax.device_count()} present")
    self.mesh = sharding.make_mesh(mesh_shape, devices=jax.devices()[:count])
    if optimizer is None:
      schedule = optax.constant_schedule(LEARNING_RATE)
      optimizer = (schedule, optim.adamw(schedule, **ADAMW))
    # The trainer's own builder: this is the step pretraining runs.
    self.program = build_pretraining_step(
      cfg,
      *optimizer,
      self.mesh,
      sharding.DEFAULT_RULES,
      global_batch_size=batch,
      grad_accum_steps=grad_accum_steps,
      seed=seed,
      pixels=pixels or typical_normalization(cfg.channels),
      donate=donate,
    )
    self._compile_and_place(execute, compiler_options, random_pixels(cfg, batch, seed))

  def _compile_and_place(self, execute: bool, compiler_options, images: np.ndarray) -> None:
    """Lowers and compiles `self.program` (timed apart); with `execute`, a
    fresh state and a batch of `images` (labels 0, no padding) on the devices."""
    start = time.perf_counter()
    self.lowered = self.program.lower()
    self.lower_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = self.lowered.compile(compiler_options=compiler_options or None)
    self.compile_s = time.perf_counter() - start
    self.state = None
    if execute:
      self.state = self.program.initial_state()
      fields = {"image": images, "mask": np.ones((len(images),), np.float32)}
      for name, spec in self.program.abstract_batch.items():
        fields.setdefault(name, np.zeros(spec.shape, spec.dtype))  # labels, erasing boxes
      self.batch = {
        name: jax.device_put(fields[name], self.program.batch_sharding)
        for name in self.program.abstract_batch
      }
      jax.block_until_ready((self.state, self.batch))
    self.num_params = sum(
      int(np.prod(a.shape)) for a in jax.tree.leaves(self.program.abstract_state.params)
    )

  def run(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.last_loss = float(metrics["loss"])
    return time.perf_counter() - start

  def cost(self) -> dict[str, float | None]:
    """XLA's own count for the whole compiled step (all devices)."""
    analysis = self.compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
      analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    flops = analysis.get("flops")
    # The SPMD program is per device: scale to the whole step.
    devices = self.mesh.size
    return {
      "xla_flops_per_step": None if flops is None else float(flops) * devices,
      "xla_bytes_accessed_per_step": (
        float(analysis["bytes accessed"]) * devices if "bytes accessed" in analysis else None
      ),
    }

  def memory(self) -> dict[str, float | None]:
    """Per-device bytes from XLA's memory analysis of the compiled step."""
    stats = self.compiled.memory_analysis()
    if stats is None:
      return {"peak_bytes": None}
    arguments = stats.argument_size_in_bytes
    outputs = stats.output_size_in_bytes
    aliased = stats.alias_size_in_bytes
    temporaries = stats.temp_size_in_bytes
    reported = getattr(stats, "peak_memory_in_bytes", 0) or 0
    # Live at once: inputs (the donated state is reused for the outputs),
    # outputs not aliased to an input, and the temporaries.
    derived = arguments + outputs - aliased + temporaries
    return {
      "peak_bytes": float(max(reported, derived)),
      "xla_peak_memory_in_bytes": float(reported) or None,
      "argument_bytes": float(arguments),
      "output_bytes": float(outputs),
      "alias_bytes": float(aliased),
      "temp_bytes": float(temporaries),
    }

  def close(self) -> None:
    self.state = self.batch = self.compiled = None


class FinetuneStep(MaeStep):
  """The real fine-tuning step of `configs/finetune.py` (the job table's
  builder: the classifier, layer-decayed AdamW, Mixup / CutMix, erasing,
  drop path) at `cfg`'s size on ImageNet's 1000 classes, sharded over
  `mesh`; timed like `MaeStep`."""

  job = "finetune"

  def __init__(
    self,
    cfg: ModelConfig,
    batch: int,
    *,
    mesh: dict[str, int] | None = None,
    seed: int = 0,
    execute: bool = True,
  ):
    from configs import finetune as finetune_config
    from mae_jax import aot

    self.cfg, self.batch_size = cfg.validate(), batch
    mesh_shape = mesh or {"data": 1, "fsdp": 1, "tensor": 1}
    devices = jax.devices()[: math.prod(mesh_shape.values())]
    self.mesh = sharding.make_mesh(mesh_shape, devices=devices)
    config = finetune_config.get_config("vit_base")
    config.model.update(
      {**dataclasses.asdict(self.cfg), "attention_impl": cfg.attention_impl or ""}
    )
    config.data.image_size, config.data.channels = cfg.image_size, cfg.channels
    config.update(baseline="random_init", init_from="", global_batch_size=batch, seed=seed)
    config.mesh.update(mesh_shape)
    plan = aot.plan_without_data(config, devices)
    self.program = aot.step_program(config, plan, self.mesh)
    self._compile_and_place(execute, None, random_pixels(cfg, batch, seed))


# ------------------------------------------------------------ torch step --


def transformers_config(cfg: ModelConfig, attention: str):
  from transformers import ViTMAEConfig

  return ViTMAEConfig(
    hidden_size=cfg.width,
    num_hidden_layers=cfg.depth,
    num_attention_heads=cfg.heads,
    intermediate_size=int(cfg.width * cfg.mlp_ratio),
    decoder_hidden_size=cfg.decoder_width,
    decoder_num_hidden_layers=cfg.decoder_depth,
    decoder_num_attention_heads=cfg.decoder_heads,
    decoder_intermediate_size=int(cfg.decoder_width * cfg.decoder_mlp_ratio),
    image_size=cfg.image_size,
    patch_size=cfg.patch_size,
    num_channels=cfg.channels,
    mask_ratio=cfg.mask_ratio,
    norm_pix_loss=cfg.norm_pix_loss,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    attn_implementation=attention,
  )


class TorchStep:
  """transformers' `ViTMAEForPreTraining`: forward, backward, AdamW step.

  The optimizer is the reference's: AdamW (0.9, 0.95), weight decay 0.05 on
  weight matrices and tokens, none on biases and norms (torch's default
  `foreach` implementation). `attention` is transformers' attention
  implementation ("sdpa", its default, or "eager"). bfloat16 runs under
  CPU/GPU autocast with float32 weights.
  """

  def __init__(
    self,
    cfg: ModelConfig,
    batch: int,
    *,
    attention: str = "sdpa",
    dtype: str = "float32",
    seed: int = 0,
    device: str = "cpu",
    compile_backend: str | None = None,
  ):
    import torch
    from transformers import ViTMAEForPreTraining

    if cfg.encoder_mask_tokens:
      raise ValueError("transformers' ViTMAE has no mask-token encoder variant")
    self.torch, self.device = torch, device
    torch.manual_seed(seed)
    self.model = ViTMAEForPreTraining(transformers_config(cfg, attention)).train().to(device)
    decay, no_decay = [], []
    for name, parameter in self.model.named_parameters():
      if not parameter.requires_grad:  # the fixed sin-cos tables
        continue
      (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    self.optimizer = torch.optim.AdamW(
      [
        {"params": decay, "weight_decay": ADAMW["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
      ],
      lr=LEARNING_RATE,
      betas=(ADAMW["b1"], ADAMW["b2"]),
      eps=1e-8,
    )
    images = random_images(cfg, batch, seed).transpose(0, 3, 1, 2).copy()
    self.images = torch.from_numpy(images).to(device)
    self.autocast = dtype in ("bfloat16", "float16")
    self.dtype = getattr(torch, dtype)
    self.attention = self.model.config._attn_implementation
    self.num_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
    # torch.compile of the forward (inductor by default; "eager" only checks
    # the path, as the CPU tests do). The first run() pays for compilation.
    self.compile_backend = compile_backend
    self.forward = self.model
    if compile_backend:
      self.forward = torch.compile(self.model, backend=compile_backend)

  def run(self) -> float:
    torch = self.torch
    start = time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device.split(":")[0], dtype=self.dtype, enabled=self.autocast):
      loss = self.forward(pixel_values=self.images).loss
    loss.backward()
    self.optimizer.step()
    self.last_loss = float(loss.detach())  # waits for the device
    return time.perf_counter() - start

  def peak_bytes(self) -> float | None:
    if not self.device.startswith("cuda"):
      return None
    return float(self.torch.cuda.max_memory_allocated(self.device))

  def close(self) -> None:
    self.model = self.forward = self.optimizer = self.images = None
    if self.device.startswith("cuda"):
      self.torch.cuda.empty_cache()


# ---------------------------------------------------------------- matmul --


def matmul_rate(
  dtype: str = "float32", size: int = 2048, *, chain: int = 1, repeats: int = 7, seed: int = 0
) -> dict[str, float]:
  """FLOP/s of (size x size) @ (size x size) through XLA on the default device.

  `chain` products run inside one jitted loop (so that dispatch does not
  count on a fast accelerator); the median of `repeats` calls is reported.
  The right factor is scaled by 1/sqrt(size), so the chained values neither
  overflow nor underflow.
  """
  dtype = jnp.dtype(dtype)
  key_a, key_b = jax.random.split(jax.random.key(seed))
  a = jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype)
  b = (jax.random.normal(key_b, (size, size), jnp.float32) / math.sqrt(size)).astype(dtype)

  @jax.jit
  def product(a, b):
    if chain == 1:
      return a @ b
    return jax.lax.fori_loop(0, chain, lambda _, x: (x @ b).astype(dtype), a)

  jax.block_until_ready(product(a, b))
  times = [common.timed(lambda: jax.block_until_ready(product(a, b))) for _ in range(repeats)]
  seconds = common.median(times)
  flops = 2.0 * size**3 * chain
  return {
    "dtype": str(dtype),
    "size": size,
    "chain": chain,
    "median_s": seconds,
    "flops_per_s": flops / seconds,
    "best_flops_per_s": flops / min(times),
  }


def describe(cfg: ModelConfig) -> str:
  extra = ", w/ [M]" if cfg.encoder_mask_tokens else ""
  return (
    f"D{cfg.width}x{cfg.depth} p{cfg.patch_size} {cfg.image_size}px "
    f"{cfg.dtype} remat={cfg.remat_policy}{' scan' if cfg.scan_layers else ''}{extra}"
  )


def model_config(preset: str | None, **overrides: Any) -> ModelConfig:
  from mae_jax.model.config import preset as make_preset

  if preset in (None, "", "custom"):
    return ModelConfig(**overrides).validate()
  return make_preset(preset, **overrides)
