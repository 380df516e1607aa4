"""Compiled peak memory per device of the training step, from abstract inputs only.

Nothing is allocated or run: the real train step (train/step.py: text encoder, diffusion
loss, gradients of the trainable groups only, clipping, AdamW, EMA; the state donated) is
lowered for its state and a batch given as jax.ShapeDtypeStructs that carry their
NamedShardings, compiled, and XLA's buffer assignment is read from
`compiled.memory_analysis()`. That answers "does this config fit this chip on this mesh"
on a laptop with forced CPU devices. The CPU backend's buffer assignment is an estimate of
a TPU's or GPU's: fusion, layouts and bfloat16 handling differ by backend.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumiere_jax.config import load_config
from lumiere_jax.models import build
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.loss import make_loss_fn
from lumiere_jax.train.optimizer import make_optimizer

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """Per-device bytes from XLA's buffer assignment, and the compile time."""

  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  compile_seconds: float

  @property
  def peak_bytes(self) -> int:
    """Everything live at once at worst: inputs, outputs not written in place of donated
    inputs, and the temporaries. (The CPU backend's own `peak_memory_in_bytes` leaves the
    temporaries out, so it is not used.)"""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def fits(self, capacity_gib: float) -> bool:
    return self.peak_bytes <= capacity_gib * GIB


def abstract_batch(config, sharding: NamedSharding) -> dict:
  """The data pipeline's numeric fields for a video or image stage (uint8 pixels, int32
  tokens), split along the batch axis. Stages with more fields (ssr, cond) need theirs."""
  model, b = build.Model(config), config.data.batch_size
  clip = model.clip_shape if model.is_video else model.clip_shape[1:]
  return {model.pixel_field: jax.ShapeDtypeStruct((b, *clip), jnp.uint8, sharding=sharding),
          "tokens": jax.ShapeDtypeStruct((b, config.text.max_length), jnp.int32,
                                         sharding=sharding)}


def train_step_memory(spec: str, overrides, mesh: Mesh, per_device_batch: int):
  """(config, MemoryReport) of the config's train step on `mesh`, with the global batch
  set to per_device_batch x the mesh's devices."""
  config = load_config(spec, [*overrides,
                              f"data.batch_size={per_device_batch * mesh.devices.size}"])
  optimizer = make_optimizer(config.train)
  layout = state_lib.Layout(config, mesh, optimizer)
  jitted = step_lib.jit_train_step(config, mesh, make_loss_fn(config), optimizer,
                                   layout.state_shardings)
  batch = abstract_batch(config, step_lib.batch_sharding(config, mesh))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
  start = time.perf_counter()
  _, compiled = step_lib.compile_train_step(config, mesh, jitted, layout.state_target(),
                                            batch, rng)
  stats = compiled.memory_analysis()
  return config, MemoryReport(argument_bytes=stats.argument_size_in_bytes,
                              output_bytes=stats.output_size_in_bytes,
                              alias_bytes=stats.alias_size_in_bytes,
                              temp_bytes=stats.temp_size_in_bytes,
                              compile_seconds=time.perf_counter() - start)
