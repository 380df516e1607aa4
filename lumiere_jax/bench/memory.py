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
import math
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumiere_jax.config import load_config
from lumiere_jax.models import build
from lumiere_jax.parallel.mesh import check_batch_fits
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
  collective_bytes: Optional[dict] = None  # kind -> bytes per device per step

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
          "tokens": jax.ShapeDtypeStruct((b, build.context_length(config)), jnp.int32,
                                         sharding=sharding)}


def train_step_memory(spec: str, overrides, mesh: Mesh, per_device_batch: int,
                      global_batch: Optional[int] = None):
  """(config, MemoryReport) of the config's train step on `mesh`, with the global batch
  set to per_device_batch x the mesh's devices, or to `global_batch` (fewer clips than
  devices: the clips' frames take the devices the batch leaves, parallel.sharding)."""
  batch = global_batch or per_device_batch * mesh.devices.size
  config = load_config(spec, [*overrides, f"data.batch_size={batch}"])
  check_batch_fits(config, mesh.devices.size)
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
                              compile_seconds=time.perf_counter() - start,
                              collective_bytes=collective_bytes(compiled.as_text()))


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")


def collective_bytes(hlo_text: str) -> dict:
  """Bytes each device receives from collectives per call of a compiled (SPMD-partitioned,
  so per-device) HLO module, by collective kind: the result shapes of every all-gather,
  all-reduce, reduce-scatter, all-to-all and collective-permute (the '-start' half of an
  asynchronous one; its '-done' is not counted again). An op inside a loop body counts
  once, so this is a lower bound where the program loops; the train step does not."""
  totals = dict.fromkeys(COLLECTIVES, 0)
  for line in hlo_text.splitlines():
    op = _OP.search(line)
    if not op:
      continue
    shapes = _SHAPE.findall(op.group(1))
    if op.group(3) and len(shapes) > 1:  # (operands..., results...) of a -start
      shapes = shapes[len(shapes) // 2:]
    totals[op.group(2)] += sum(
        _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in shapes)
  return totals
