"""Timing the real train and sampling steps, the matmul peak, and MFU.

What is timed is the program a run executes: the train step of train/step.py (diffusion
loss, gradients of the trainable groups only, clipping, AdamW, EMA, non-finite guard; the
state donated) and one denoiser call as the samplers make it, each compiled once for a
fixed random batch (data loading excluded), run `warmup` times, then `steps` times, each
waited for; the median is reported. Compile time and XLA's buffer assignment
(`compiled.memory_analysis()`) come from the same compilation.

MFU is achieved model FLOP/s over a peak: on CPU the peak is measured in the same run
(jax.jit(jnp.dot) of two 2048 x 2048 float32 matrices, median of several), since no table
knows a shared CPU's speed; on GPU and TPU it is the chip's bf16 peak from
train/metrics.py's table, times the devices used.
"""

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Callable, List, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumiere_jax.bench import flops as flops_lib
from lumiere_jax.bench import memory as memory_lib
from lumiere_jax.config import load_config
from lumiere_jax.diffusion import denoisers
from lumiere_jax.models import build
from lumiere_jax.parallel import sharding as sharding_lib
from lumiere_jax.parallel.mesh import check_batch_fits, make_mesh
from lumiere_jax.train import metrics as metrics_lib
from lumiere_jax.train import optimizer as optimizer_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.loss import make_loss_fn

MATMUL_N = 2048


def init_key():
  """The key the benchmarks initialise parameters from. The values do not matter for
  timing, and the rbg generator's init program compiles in a third of threefry's time
  (threefry builds a hash graph per parameter)."""
  return jax.random.key(0, impl="unsafe_rbg")


@dataclasses.dataclass(frozen=True)
class StepTiming:
  """Seconds of one compiled program: each timed call, their median, the compile."""

  times: tuple
  compile_seconds: float
  memory: memory_lib.MemoryReport

  @property
  def median(self) -> float:
    return statistics.median(self.times)


def timed_calls(fn: Callable[[], object], steps: int, warmup: int) -> List[float]:
  """Seconds of each of `steps` calls of fn after `warmup` untimed ones; every call is
  waited for (block_until_ready on what it returns)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def compile_timed(lower: Callable[[], object]):
  """(compiled, seconds to lower and compile) of the program `lower()` returns lowered."""
  start = time.perf_counter()
  compiled = lower().compile()
  return compiled, time.perf_counter() - start


def memory_report(compiled, compile_seconds: float) -> memory_lib.MemoryReport:
  stats = compiled.memory_analysis()
  return memory_lib.MemoryReport(argument_bytes=stats.argument_size_in_bytes,
                                 output_bytes=stats.output_size_in_bytes,
                                 alias_bytes=stats.alias_size_in_bytes,
                                 temp_bytes=stats.temp_size_in_bytes,
                                 compile_seconds=compile_seconds)


def memory_dict(report: memory_lib.MemoryReport) -> dict:
  fields = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes")
  return {**{name: getattr(report, name) for name in fields},
          "peak_bytes": report.peak_bytes}


# -- peaks and MFU -----------------------------------------------------------------------

def matmul_peak(device: Optional[jax.Device] = None, n: int = MATMUL_N,
                repeats: int = 7) -> float:
  """FLOP/s of jax.jit(jnp.dot) on two n x n float32 matrices on `device`: the median of
  `repeats` timed calls after two warm-up calls."""
  device = device or jax.devices()[0]
  a, b = (jax.device_put(jax.random.normal(key, (n, n), jnp.float32), device)
          for key in jax.random.split(jax.random.key(0)))
  dot = jax.jit(jnp.dot)
  times = timed_calls(lambda: dot(a, b), repeats, warmup=2)
  return 2 * n ** 3 / statistics.median(times)


@dataclasses.dataclass(frozen=True)
class Peak:
  """Peak FLOP/s of the devices a benchmark uses, and where the number comes from."""

  flops_per_s: Optional[float]
  source: str


def peak_flops(devices: Sequence[jax.Device]) -> Peak:
  """CPU: the same-run matmul peak of one device (CPU devices share the host's cores, so
  more devices do not add peak). GPU/TPU: the table's bf16 peak x devices, if known."""
  device = devices[0]
  if device.platform == "cpu":
    return Peak(matmul_peak(device), f"jax.jit(jnp.dot) {MATMUL_N}x{MATMUL_N} float32, "
                                     "median of 7, same run")
  per_device = metrics_lib.peak_flops_per_device(0.0, device.device_kind)
  if per_device is None:
    return Peak(None, f"no bf16 peak known for {device.device_kind!r}")
  return Peak(per_device * len(devices), f"bf16 peak of {device.device_kind} x {len(devices)}")


def throughput(flops: int, seconds: Optional[float], peak: Peak) -> dict:
  """achieved FLOP/s and MFU of `flops` done in `seconds` (None where not timed)."""
  if not seconds:
    return {"achieved_flops_per_s": None, "mfu": None}
  achieved = flops / seconds
  return {"achieved_flops_per_s": achieved,
          "mfu": achieved / peak.flops_per_s if peak.flops_per_s else None}


# -- the real train step and sampling step of a config -----------------------------------

def random_batch(config) -> dict:
  """A fixed batch in the data pipeline's format: uint8 pixels, int32 tokens."""
  rng = np.random.default_rng(0)
  model, b = build.Model(config), config.data.batch_size
  clip = model.clip_shape if model.is_video else model.clip_shape[1:]
  return {model.pixel_field: rng.integers(0, 256, (b, *clip), dtype=np.uint8),
          "tokens": rng.integers(3, config.text.vocab_size, (b, build.context_length(config)),
                                 dtype=np.int32)}


def config_mesh(config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """The config's mesh, refused in one line (before anything compiles) where it does not
  fit the devices or the batch."""
  devices = list(jax.devices() if devices is None else devices)
  check_batch_fits(config, len(devices))
  return make_mesh(config.mesh, devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@dataclasses.dataclass
class TrainStepRun:
  """A compiled train step with its live state, ready to call."""

  layout: state_lib.Layout
  compiled: object
  compile_seconds: float
  state: object
  batch: dict
  rng: object
  loss: Optional[float] = None

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    self.loss = metrics["loss"]
    return self.state

  @property
  def trainable_params(self) -> int:
    return build.count_params(self.layout.abstract_state.params)


def prepare_train_step(config, mesh: Mesh) -> TrainStepRun:
  """Initialises the sharded state and compiles the real train step for a random batch."""
  layout = state_lib.Layout(config, mesh, optimizer_lib.make_optimizer(config.train))
  jitted = step_lib.jit_train_step(config, mesh, make_loss_fn(config), layout.optimizer,
                                   layout.state_shardings)
  state = state_lib.init_state(layout, init_key())
  batch = jax.device_put(random_batch(config), step_lib.batch_sharding(config, mesh))
  rng = jax.device_put(jax.random.key(1), replicated(mesh))
  start = time.perf_counter()
  _, compiled = step_lib.compile_train_step(config, mesh, jitted, state, batch, rng)
  return TrainStepRun(layout, compiled, time.perf_counter() - start, state, batch, rng)


def time_train_step(run: TrainStepRun, steps: int, warmup: int) -> StepTiming:
  times = timed_calls(run, steps, warmup)
  return StepTiming(tuple(times), run.compile_seconds,
                    memory_report(run.compiled, run.compile_seconds))


def sample_inputs(config, batch: int, sharding: NamedSharding) -> tuple:
  """Random denoiser inputs as a sampling step sees them: x_t, t in [0, 1], and text
  conditioning {'emb', 'mask'}; split along the batch axis."""
  keys = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(keys[0], build.denoiser_input_shape(config, batch), jnp.float32)
  t = jax.random.uniform(keys[1], (batch,), jnp.float32)
  emb = jax.random.normal(keys[2], (batch, build.context_length(config), config.text.width),
                          jnp.float32)
  cond = {"emb": emb, "mask": jnp.ones((batch, build.context_length(config)), bool)}
  return jax.device_put((x, t, cond), sharding)


def time_sample_step(config, layout: state_lib.Layout, batch: int, steps: int,
                     warmup: int) -> StepTiming:
  """One denoiser call (the work of one sampling step without guidance) on `batch`
  videos, with the layout's sharded parameters (the text encoder's left out)."""
  mesh = layout.mesh
  params = state_lib.init_params(layout, init_key())
  params = {k: v for k, v in params.items() if k != "text"}
  denoise = denoisers.text_denoiser(build.build_denoiser(config.model))
  inputs = sample_inputs(config, batch,
                         NamedSharding(mesh, sharding_lib.logical_to_spec(
                             ("batch",), (batch,), config.logical_axis_rules,
                             sharding_lib.mesh_sizes(mesh))))
  jitted = jax.jit(denoise)

  def lower():
    with sharding_lib.activation_sharding(mesh, config.logical_axis_rules):
      return jitted.lower(params, *inputs)

  compiled, seconds = compile_timed(lower)
  times = timed_calls(lambda: compiled(params, *inputs), steps, warmup)
  return StepTiming(tuple(times), seconds, memory_report(compiled, seconds))


# -- results: rows, machine, the presets built on configs --------------------------------

CHIPS = (("TPU v5e", 16), ("TPU v5p", 95), ("H100", 80))


def row(flops: int, measured: Optional[StepTiming], peak: Peak,
        memory: Optional[memory_lib.MemoryReport] = None) -> dict:
  """One benchmarked program: median seconds (None where not timed), the timed calls,
  model FLOPs, achieved FLOP/s and MFU, compile seconds and compiled memory per device."""
  memory = memory or (measured.memory if measured else None)
  seconds = measured.median if measured else None
  return {"seconds": seconds, "times_s": list(measured.times) if measured else [],
          "flops": int(flops), **throughput(flops, seconds, peak),
          "compile_s": memory.compile_seconds if memory else None,
          "memory": memory_dict(memory) if memory else None}


def machine() -> dict:
  """What the numbers depend on: the host, the backend and devices, the versions."""
  device = jax.devices()[0]
  return {"host": platform.machine(), "cpu_count": os.cpu_count(),
          "load_average": [round(x, 2) for x in os.getloadavg()],
          "backend": device.platform, "device_kind": device.device_kind,
          "devices": jax.device_count(), "python": platform.python_version(),
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          # With a persistent cache that already holds a program, compile_s is its load.
          "compilation_cache": jax.config.jax_compilation_cache_dir or "off"}


def assemble(preset: str, rows: dict, peak: Peak, settings: dict, params: dict,
             notes: Sequence[str] = (), **extra) -> dict:
  """The JSON a preset writes: its rows, plus every row's headline numbers as flat
  per-row dicts (`train_step_s`, `flops['train_step']`, `mfu['sample_step']`, ...)."""
  result = {"preset": preset, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "settings": settings, "params": params,
            "peak": {"flops_per_s": peak.flops_per_s, "source": peak.source}}
  for key, r in rows.items():
    result[f"{key}_s"] = r["seconds"]
  for field in ("flops", "achieved_flops_per_s", "mfu", "compile_s"):
    result[field] = {key: r[field] for key, r in rows.items()}
  result["peak_memory_bytes"] = {key: r["memory"]["peak_bytes"] if r["memory"] else None
                                 for key, r in rows.items()}
  result.update(rows=rows, notes=list(notes), **extra)
  return result


def bench_config(preset: str, spec: str, overrides: Sequence[str], steps: int, warmup: int,
                 sample_batch: Optional[int] = None) -> dict:
  """Train step and sampling step of a config on the config's mesh over the visible
  devices: one by default; on a CPU, `--xla_force_host_platform_device_count=N` with
  `--xla_cpu_multi_thread_eigen=false` gives each core a device and a share of the batch
  (LUMIERE_CPU_DEVICES=cores, runtime.apply_cpu_devices)."""
  config = load_config(spec, overrides)
  mesh = config_mesh(config)
  peak = peak_flops(mesh.devices.flatten())
  run = prepare_train_step(config, mesh)
  train = time_train_step(run, steps, warmup)
  sample_batch = sample_batch or config.data.batch_size
  sample = time_sample_step(config, run.layout, sample_batch, steps, warmup)
  batch = config.data.batch_size
  rows = {"train_step": row(flops_lib.model_flops(config, batch).train_step, train, peak),
          "sample_step": row(flops_lib.model_flops(config, sample_batch).forward, sample,
                             peak)}
  settings = {"config": spec, "overrides": list(overrides), "steps": steps,
              "warmup": warmup, "batch": batch, "sample_batch": sample_batch,
              "frames": build.Model(config).frames,
              "resolution": config.data.resolution, "dtype": config.model.dtype,
              "remat": config.model.remat, "trainable": list(config.train.trainable),
              "devices": mesh.devices.size}
  params = {"total": build.count_params(run.layout.abstract_params),
            "trainable": run.trainable_params}
  notes = ["model FLOPs: bench/flops.py (matmul work of the denoiser; the text encoder "
           "and elementwise work are not counted)",
           "sampling step: one denoiser call without guidance (guided sampling makes two)"]
  return assemble(preset, rows, peak, settings, params, notes, loss=float(run.loss))


def bench_paper_scale(preset: str, spec: str, overrides: Sequence[str], steps: int,
                      warmup: int, per_device_batch: int = 1, timed: bool = False) -> dict:
  """Parameters, analytic FLOPs, and the compiled peak memory per device of the real
  train step on a mesh of all available devices (abstract inputs, nothing allocated);
  timed only when `timed` (far too slow on a CPU)."""
  mesh = config_mesh(load_config(spec, overrides))
  config, report = memory_lib.train_step_memory(spec, overrides, mesh, per_device_batch)
  batch = config.data.batch_size
  peak = peak_flops(mesh.devices.flatten())
  per_clip = flops_lib.model_flops(config, 1)
  train = sample = None
  if timed:
    run = prepare_train_step(config, mesh)
    train = time_train_step(run, steps, warmup)
    sample = time_sample_step(config, run.layout, batch, steps, warmup)
  rows = {"train_step": row(per_clip.train_step * batch, train, peak, report),
          "sample_step": row(per_clip.forward * batch, sample, peak)}
  abstract = flax.linen.meta.unbox(build.abstract_params(config))
  trainable, _ = build.split_trainable(abstract, config.train.trainable)
  settings = {"config": spec, "overrides": list(overrides), "steps": steps if timed else 0,
              "warmup": warmup if timed else 0, "batch": batch,
              "per_device_batch": per_device_batch, "mesh": dict(mesh.shape),
              "frames": config.data.num_frames, "resolution": config.data.resolution,
              "dtype": config.model.dtype, "remat": config.model.remat,
              "trainable": list(config.train.trainable), "devices": int(mesh.devices.size)}
  notes = [] if timed else [
      f"not timed: one {config.data.num_frames}-frame {config.data.resolution}x"
      f"{config.data.resolution} train step is far too slow for a CPU (and needs the "
      "table's peak memory on every device); it is timed on an accelerator, or with --time"]
  notes.append("memory: the train step compiled for abstract inputs (bench/memory.py); "
               "on CPU an estimate of an accelerator's buffer assignment")
  return assemble(preset, rows, peak, settings,
                  {"total": build.count_params(abstract),
                   "trainable": build.count_params(trainable)}, notes,
                  flops_per_clip={"train_step": per_clip.train_step,
                                  "sample_step": per_clip.forward},
                  fits={f"{chip} ({gib} GiB)": report.fits(gib) for chip, gib in CHIPS})

