"""Compiled peak memory per device of the SSR model's windowed denoiser (temporal
MultiDiffusion), as the clip grows: one window per device, flat in T.

  python benchmarks/ssr_memory.py                  # lumiere_base:ssr, 8 devices, T 16..80
  python benchmarks/ssr_memory.py --config shapes_tiny:ssr --frames 8,16,24 --devices 4

What is compiled is one sampling-step evaluation of the real pipeline's denoiser
(pipelines/upsample.py + pipelines/windowed.py): the clip's windows, each device
gathering its own from the replicated clip and its conditioning, the STUNet on them, the
weighted shares of the fused prediction and their psum. Inputs are abstract
(jax.ShapeDtypeStruct with NamedShardings): nothing is allocated or run. The per-device
numbers come from XLA's buffer assignment (`compiled.memory_analysis()`) on forced CPU
devices, an estimate of a TPU's or GPU's (fusion, layouts and bfloat16 handling differ).

The window plan is padded to a multiple of the devices with zero-weight windows, so with
8 devices every T up to 100 frames (W 16, overlap 2: at most 7 windows) is one window per
device: the model's activations (one 16-frame window at 1024x1024) do not grow with T;
what grows is the clip itself and its conditioning and prediction buffers, replicated
(3 channels, float32: 12 MiB per frame each).
"""

import argparse
import os
import platform
import sys

from lumiere_jax import config as config_lib

DEVICES_FLAG = "--xla_force_host_platform_device_count"
SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "default": "CPU_SCHEDULER_TYPE_DEFAULT"}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="lumiere_base:ssr")
  parser.add_argument("--devices", type=int, default=8, help="forced CPU devices")
  parser.add_argument("--frames", default="16,32,48,64,80", help="clip lengths T")
  parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="memory",
                      help="XLA:CPU scheduler (benchmarks/memory.py says why 'memory')")
  config_lib.accept_overrides(parser)
  return parser.parse_args(argv)


def denoiser_memory(config, num_frames: int):
  """(plan, devices sharing the windows, MemoryReport) of one windowed denoiser call on a
  clip of num_frames frames."""
  import time

  import flax
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from lumiere_jax.bench.memory import MemoryReport
  from lumiere_jax.models import build
  from lumiere_jax.pipelines import windowed

  model = build.Model(config)
  sampling = windowed.WindowedSampling(config, windowed.window_settings(config))
  plan = sampling.plan(num_frames)
  replicated = NamedSharding(sampling.mesh, PartitionSpec())
  abstract = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype,
                                                                   sharding=replicated)
  params = jax.tree_util.tree_map(
      lambda p: abstract(p.shape, p.dtype),
      build.denoiser_params(flax.linen.meta.unbox(build.abstract_params(config))))
  r, text = config.data.resolution, config.text
  clip = abstract((1, num_frames, r, r, 3))
  cond = {"emb": abstract((1, text.max_length, text.width)),
          "mask": abstract((1, text.max_length), jnp.bool_),
          "noise_level": abstract((1,)), "extra": clip}

  def fused_prediction(params, x, t, cond):
    denoise = lambda x, t, c: model.denoise(params, x, t, c, c["extra"])
    return sampling.denoiser(denoise, plan, frame_fields=("extra",))(x, t, cond)

  start = time.perf_counter()
  compiled = jax.jit(fused_prediction).lower(params, clip, abstract((1,)), cond).compile()
  stats = compiled.memory_analysis()
  return plan, sampling.devices, MemoryReport(argument_bytes=stats.argument_size_in_bytes,
                                              output_bytes=stats.output_size_in_bytes,
                                              alias_bytes=stats.alias_size_in_bytes,
                                              temp_bytes=stats.temp_size_in_bytes,
                                              compile_seconds=time.perf_counter() - start)


def main(argv):
  args = parse_args(argv)
  # Before the CPU backend starts: the device count is fixed then.
  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} {DEVICES_FLAG}={args.devices} "
                             f"--xla_cpu_scheduler_type={SCHEDULERS[args.scheduler]}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from lumiere_jax.bench.memory import GIB

  given = config_lib.parse_overrides(args.config_overrides)
  config = config_lib.load_config(args.config, given)
  r, low = config.data.resolution, config.data.low_resolution
  print(f"{args.config} {' '.join(given)}: windowed SSR denoiser (one sampling step), "
        f"{low} -> {r} pixels, window {config.diffusion.window or config.data.num_frames} "
        f"overlap {config.diffusion.window_overlap}, {jax.device_count()} devices, compute "
        f"{config.model.dtype}, {args.scheduler} scheduler; jax {jax.__version__}, "
        f"{platform.machine()} CPU backend")
  print("| T | windows (padded) | per device | arguments GiB | outputs GiB | temporaries GiB "
        "| peak GiB | compile s |\n|---:|---|---:|---:|---:|---:|---:|---:|")
  for frames in (int(f) for f in args.frames.split(",")):
    plan, devices, report = denoiser_memory(config, frames)
    gib = lambda n: f"{n / GIB:.3f}"
    print(f"| {frames} | {len(plan.starts)} ({plan.count}) | "
          f"{plan.count // devices} | {gib(report.argument_bytes)} | "
          f"{gib(report.output_bytes)} | {gib(report.temp_bytes)} | "
          f"{gib(report.peak_bytes)} | {report.compile_seconds:.0f} |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
