"""Compiled peak memory per device of the training step at paper scale, on forced CPU
devices: abstract inputs only, nothing allocated or run (lumiere_jax/bench/memory.py).
The step is the real one (lumiere_jax/train/step.py) with the config's remat and dtype.

  python benchmarks/memory.py                      # lumiere_base:t2v, 8 devices, fsdp=8
  python benchmarks/memory.py --config shapes_tiny:t2v --mesh 2,4,1 --config.model.remat=none
  python benchmarks/memory.py --global-batch 1     # one clip over 8 devices: fits 16 GiB

Prints a table of the per-device bytes and whether they fit 16 GiB (TPU v5e), 95 GiB
(TPU v5p) and 80 GiB (H100), and the bytes each device receives per step from each kind
of collective. Compiling the paper-scale step takes minutes on a CPU.

The CPU backend's default scheduler orders work for concurrency, not memory: it runs a
remat block's recomputation early, so the compiled peak does not drop with remat at all
(shapes_tiny:t2v at 32 frames of 64x64: 3,691 MiB temporaries with and without remat).
Its memory-optimized scheduler (--scheduler memory, the default here) places the
recomputation where it is used, as accelerator compilers do (1,981 MiB with remat
'block', 3,590 MiB without), so it is the estimate this script reports.
"""

import argparse
import os
import platform
import sys

from lumiere_jax import config as config_lib

DEVICES_FLAG = "--xla_force_host_platform_device_count"
SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "default": "CPU_SCHEDULER_TYPE_DEFAULT"}
CHIPS = (("TPU v5e", 16), ("TPU v5p", 95), ("H100", 80))


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="lumiere_base:t2v")
  parser.add_argument("--devices", type=int, default=8, help="forced CPU devices")
  parser.add_argument("--mesh", default="1,-1,1", help="mesh.shape ('data,fsdp,tensor')")
  parser.add_argument("--per-device-batch", type=int, default=1)
  parser.add_argument("--global-batch", type=int, default=None,
                      help="clips in all (default: per-device batch x devices); fewer "
                           "clips than devices split each clip's frames over the rest")
  parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="memory",
                      help="XLA:CPU scheduler (see above)")
  config_lib.accept_overrides(parser)
  return parser.parse_args(argv)


def main(argv):
  args = parse_args(argv)
  # Before the CPU backend starts: the device count is fixed then.
  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} {DEVICES_FLAG}={args.devices} "
                             f"--xla_cpu_scheduler_type={SCHEDULERS[args.scheduler]}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax

  from lumiere_jax.bench import memory
  from lumiere_jax.parallel.mesh import make_mesh

  given = config_lib.parse_overrides(args.config_overrides)
  overrides = [f"mesh.shape=({args.mesh})", *given]
  mesh = make_mesh(config_lib.load_config(args.config, overrides).mesh)
  config, report = memory.train_step_memory(args.config, overrides, mesh,
                                            args.per_device_batch, args.global_batch)
  gib = lambda n: f"{n / memory.GIB:.3f}"
  print(f"{args.config} {' '.join(given)}: train step, mesh {dict(mesh.shape)}, "
        f"{config.data.batch_size} clips ({config.data.batch_size / mesh.devices.size:g} "
        f"per device), {config.data.num_frames} frames at "
        f"{config.data.resolution}x{config.data.resolution}, remat {config.model.remat}, "
        f"compute {config.model.dtype}, {args.scheduler} scheduler; jax {jax.__version__}, "
        f"{platform.machine()} CPU backend")
  print("| per device | GiB |\n|---|---:|")
  for name, value in (("arguments (state: params, AdamW moments, EMA; batch)",
                       report.argument_bytes),
                      ("outputs", report.output_bytes),
                      ("outputs aliased to donated arguments", report.alias_bytes),
                      ("temporaries (activations, gradients, workspace)", report.temp_bytes),
                      ("peak = arguments + outputs - aliased + temporaries", report.peak_bytes)):
    print(f"| {name} | {gib(value)} |")
  for chip, capacity in CHIPS:
    print(f"| fits {chip} ({capacity} GiB) | {'yes' if report.fits(capacity) else 'no'} |")
  for kind, value in report.collective_bytes.items():
    print(f"| {kind} received per step (GiB) | {gib(value)} |")
  print(f"| collectives in all (GiB per device per step) | "
        f"{gib(sum(report.collective_bytes.values()))} |")
  print(f"compile time: {report.compile_seconds:.0f} s")


if __name__ == "__main__":
  main(sys.argv[1:])
