"""`lumiere train`: train a stage (t2i, t2v, ssr, cond, style) from a config.

  lumiere train --config NAME[:VARIANT] --workdir DIR [--config.a.b=VALUE ...]
                [--coordinator_address HOST:PORT --num_processes N --process_id I]

`--config` is a shipped config by name (shapes_tiny:t2i) or a file (PATH.py[:VARIANT]);
any field can be overridden as --config.a.b=VALUE (the syntax every command shares,
config/flags.py); the config is validated and locked after the overrides. A workdir
that holds checkpoints is resumed from the newest one. The distributed flags default to
the launchers' LUMIERE_* environment variables (launch/common.py); without them the run
is a single process.
"""

import argparse
import sys

from lumiere_jax import config as config_lib
from lumiere_jax.errors import UserError
from lumiere_jax.train import distributed

HELP = "Train a stage (t2i, t2v, ssr, cond, style) from a config."
EPILOG = """The distributed flags default to $LUMIERE_COORDINATOR_ADDRESS,
$LUMIERE_NUM_PROCESSES and $LUMIERE_PROCESS_ID (set by the launchers in launch/); without
them the run is one process."""


def add_arguments(parser):
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.epilog = EPILOG
  parser.add_argument("--config", metavar="NAME[:VARIANT]",
                      help="a shipped config (e.g. shapes_tiny:t2i) or a file "
                           "PATH.py[:VARIANT] (required)")
  parser.add_argument("--workdir", metavar="DIR",
                      help="checkpoints, tensorboard, profile (required; resumed if it "
                           "holds checkpoints)")
  parser.add_argument("--stop_at_step", type=int, default=0, metavar="N",
                      help="end this run at step N with a checkpoint (job time limits); "
                           "the next run resumes exactly")
  parser.add_argument("--coordinator_address", metavar="HOST:PORT",
                      help="jax.distributed coordinator")
  parser.add_argument("--num_processes", type=int, metavar="N",
                      help="jax.distributed process count")
  parser.add_argument("--process_id", type=int, metavar="I",
                      help="jax.distributed process index")
  parser.add_argument("--jax_distributed_auto", action="store_true",
                      help="let jax detect a TPU pod or SLURM job instead")
  config_lib.accept_overrides(parser)


def load(args) -> argparse.Namespace:
  """The arguments with `config` loaded: overridden, validated, locked. Every problem
  is one UserError line."""
  if args.config is None:
    raise UserError("--config is required, e.g. --config shapes_tiny:t2i")
  if not args.workdir:
    raise UserError("--workdir is required")
  overrides = config_lib.parse_overrides(args.config_overrides)
  return argparse.Namespace(**{**vars(args),
                               "config": config_lib.load_config(args.config, overrides)})


def parse_flags(argv) -> argparse.Namespace:
  """`lumiere train`'s command line after `train`, loaded (for tests and launch/)."""
  from lumiere_jax.cli import OneLineParser  # pylint: disable=import-outside-toplevel
  parser = OneLineParser(prog="lumiere train")
  add_arguments(parser)
  return load(parser.parse_args(argv))


def run(args) -> int:
  values = load(args)
  if values.stop_at_step < 0:
    raise UserError(f"--stop_at_step must be >= 0 (0: no early stop), got "
                    f"{values.stop_at_step}")
  # Imported here so that `lumiere --help` does not pay for orbax, grain and tensorboardX.
  from lumiere_jax.train import loop  # pylint: disable=import-outside-toplevel
  loop.check_run(values.config, values.workdir)  # before anything is created or started
  distributed.initialize(values.coordinator_address, values.num_processes,
                         values.process_id, values.jax_distributed_auto)
  try:
    result = loop.train(values.config, values.workdir, stop_at_step=values.stop_at_step,
                        log_file=True)
  except loop.TrainingStopped as e:
    print(f"{args._prog}: {e}", file=sys.stderr)
    return 1
  if result.preempted:
    print(f"{args._prog}: preempted; step {result.step} saved in {values.workdir}",
          file=sys.stderr)
  return 0
