"""`lumiere bench`: benchmark train and sampling steps (time, FLOPs, MFU, memory).

  lumiere bench tiny-t2v --json /tmp/tiny_t2v.json
  lumiere bench tiny-t2i --config.data.resolution=16 --batch 4
  lumiere bench base --json /tmp/base.json        # analytic FLOPs + compiled memory
  XLA_FLAGS=--xla_force_host_platform_device_count=8 lumiere bench base   # fsdp over 8

Prints a table and, with --json, writes every number (per row: median seconds and each
timed call, model FLOPs, achieved FLOP/s, MFU, compile seconds, compiled memory per
device) plus the machine, the versions and the settings. The library functions behind
the presets are in lumiere_jax/bench/timing.py. The lumiere-pytorch peer's model and the
side-by-side with it are benchmarks in the repository, not presets: benchmarks/peer/.
"""

import json
import os
import pathlib
import tempfile

from lumiere_jax import config as config_lib
from lumiere_jax.bench import report
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic

HELP = "Benchmark train and sampling steps (time, FLOPs, MFU, memory)."

PRESETS = {
    "tiny-t2i": "shapes_tiny:t2i, the batch split over the visible devices (one; "
                "LUMIERE_CPU_DEVICES=cores: one per CPU core) (backbone trained, text frozen)",
    "tiny-t2v": "shapes_tiny:t2v, the batch split over the visible devices (temporal "
                "layers trained)",
    "base": "lumiere_base:t2v at paper scale: parameters, FLOPs, compiled peak "
            "memory per device on all available devices (remat=block, per-device batch 1); "
            "timed only with --time or on an accelerator",
}
CONFIG_PRESETS = {"tiny-t2i": "shapes_tiny:t2i", "tiny-t2v": "shapes_tiny:t2v"}
BASE_SPEC = "lumiere_base:t2v"
MEMORY_SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def add_arguments(parser):
  parser.add_argument("preset", metavar="PRESET",
                      help="; ".join(f"{name}: {text}" for name, text in PRESETS.items()))
  parser.add_argument("--json", metavar="PATH", help="also write the results here")
  parser.add_argument("--steps", type=int, default=5, metavar="N",
                      help="timed calls of each program, median reported (default 5)")
  parser.add_argument("--warmup", type=int, default=2, metavar="N",
                      help="untimed calls after compiling (default 2)")
  parser.add_argument("--batch", type=int, metavar="N",
                      help="tiny-*: train batch (default: the config's)")
  parser.add_argument("--sample-batch", type=int, metavar="N",
                      help="tiny-*: videos per sampling step (default: the train batch)")
  parser.add_argument("--time", action="store_true",
                      help="base: time the steps on a CPU too (very slow)")
  config_lib.accept_overrides(parser)


def check_args(args) -> None:
  """Every input problem as one line, before anything compiles or is written."""
  if args.preset not in PRESETS:
    raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
  if args.steps < 1:
    raise UserError(f"--steps must be >= 1, got {args.steps}")
  if args.warmup < 0:
    raise UserError(f"--warmup must be >= 0, got {args.warmup}")
  for name in ("batch", "sample_batch"):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
  if args.preset not in CONFIG_PRESETS:
    for flag, value in (("--batch", args.batch), ("--sample-batch", args.sample_batch)):
      if value is not None:
        raise UserError(f"{flag} applies to the tiny-* presets, not {args.preset}")
  if args.time and args.preset != "base":
    raise UserError("--time applies to the base preset (the others are always timed)")
  if args.json is not None:
    check_writable(pathlib.Path(args.json))


def check_writable(path: pathlib.Path) -> None:
  """The JSON target must be a file path in a directory we can write (or create): a
  throwaway file is made in the nearest existing directory, so a read-only or special
  filesystem is refused now, not after minutes of benchmarking."""
  if path.is_dir():
    raise UserError(f"--json {path} is a directory")
  parent = path.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise UserError(f"--json {path}: {parent} is not a directory")
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise UserError(f"--json {path}: cannot write in {parent} ({e.strerror or e})") from e


def run_preset(args) -> dict:
  """The preset's results (see lumiere_jax/bench/timing.py:assemble)."""
  if args.preset == "base" and MEMORY_SCHEDULER_FLAG.split("=")[0] not in os.environ.get(
      "XLA_FLAGS", ""):
    # Before the backend starts (it has not in a `lumiere` process): XLA:CPU's default
    # scheduler runs remat recomputation early, so its peak would ignore remat
    # (benchmarks/memory.py explains); accelerators place it where it is used.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {MEMORY_SCHEDULER_FLAG}"
  overrides = config_lib.parse_overrides(args.config_overrides)
  from lumiere_jax.bench import timing  # jax work only after the checks
  if args.preset == "base":
    import jax
    timed = args.time or jax.devices()[0].platform != "cpu"
    return timing.bench_paper_scale(args.preset, BASE_SPEC,
                                    ["model.remat=block", *overrides], args.steps,
                                    args.warmup, timed=timed)
  if args.batch is not None:
    overrides.append(f"data.batch_size={args.batch}")
  return timing.bench_config(args.preset, CONFIG_PRESETS[args.preset], overrides,
                             args.steps, args.warmup, args.sample_batch)


def run(args) -> int:
  check_args(args)
  result = run_preset(args)
  print(report.format_table(result))
  if args.json is not None:
    try:
      atomic.write_text(args.json, json.dumps(result, indent=1) + "\n")
    except OSError as e:
      raise UserError(f"--json {args.json}: {e.strerror or e}") from e
    print(f"wrote {args.json}")
  return 0
