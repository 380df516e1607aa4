"""`lumiere train`: train a stage (t2i, t2v, ssr, cond, style) from a config.

  lumiere train --config configs/NAME.py[:VARIANT] --workdir DIR [--config.a.b=value ...]
                [--coordinator_address HOST:PORT --num_processes N --process_id I]

Flags are absl flags and the config is an ml_collections config flag, so any field can be
overridden as --config.a.b=value; the config is validated and locked after the
overrides. A workdir that holds checkpoints is resumed from the newest one. The
distributed flags default to the launchers' LUMIERE_* environment variables
(launch/common.py); without them the run is a single process.
"""

import argparse
import pathlib
import sys

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from lumiere_jax.config import load_config, set_field, validate
from lumiere_jax.errors import UserError
from lumiere_jax.train import distributed

HELP = "Train a stage (t2i, t2v, ssr, cond, style) from a config."
FLAGS_HELP = """flags:
  --config FILE[:VARIANT]   config file, e.g. configs/shapes_tiny.py:t2i (required)
  --config.a.b=VALUE        override any config field (repeatable)
  --workdir DIR             checkpoints, tensorboard, profile (required; resumed if it
                            holds checkpoints)
  --stop_at_step N          end this run at step N with a checkpoint (job time limits);
                            the next run resumes exactly
  --coordinator_address HOST:PORT, --num_processes N, --process_id I
                            jax.distributed settings (default: $LUMIERE_COORDINATOR_ADDRESS,
                            $LUMIERE_NUM_PROCESSES, $LUMIERE_PROCESS_ID)
  --jax_distributed_auto    let jax detect a TPU pod or SLURM job instead
"""


def add_arguments(parser):
  """Everything after `train` goes to absl; argparse only answers --help.

  argparse cannot declare `--config.a.b=value` flags (their names are the config's
  fields), so the subparser's parse_known_args hands the arguments over untouched.
  """
  parser.formatter_class = argparse.RawDescriptionHelpFormatter
  parser.usage = ("%(prog)s --config FILE[:VARIANT] --workdir DIR [--config.a.b=VALUE ...] "
                  "[distributed flags]")
  parser.epilog = FLAGS_HELP
  parse_known_args = parser.parse_known_args

  def pass_through(args=None, namespace=None):
    args = list(args or [])
    if "-h" in args or "--help" in args:
      return parse_known_args(["--help"], namespace)
    namespace, _ = parse_known_args([], namespace)
    namespace.absl_argv = args
    return namespace, []

  parser.parse_known_args = pass_through


def define_flags(argv) -> flags.FlagValues:
  """A fresh flag set per call, so tests and notebooks can parse more than once.
  config_flags finds the --config.KEY overrides it must define in the argv it is given
  here (else in sys.argv, which is not what `lumiere train` parses)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file[:variant]",
                                  flag_values=values, lock_config=False, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run folder", flag_values=values)
  flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port",
                      flag_values=values)
  flags.DEFINE_integer("num_processes", None, "jax.distributed process count",
                       flag_values=values)
  flags.DEFINE_integer("process_id", None, "jax.distributed process index",
                       flag_values=values)
  flags.DEFINE_integer("stop_at_step", 0, "stop (with a checkpoint) at this step; 0 = at "
                       "config.train.num_steps", flag_values=values)
  flags.DEFINE_bool("jax_distributed_auto", False,
                    "jax.distributed.initialize() with cluster auto-detection",
                    flag_values=values)
  return values


def parse_flags(argv) -> flags.FlagValues:
  """Parses and validates; every problem is one UserError line."""
  _refuse_repeated_overrides(argv)
  argv = ["lumiere train", *argv]
  values = define_flags(argv)
  try:
    values(argv)
    config = values.config
    if config is not None:
      config.get("stage")  # config_flags reports a file that failed to load only on use
  except (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError) as e:
    raise UserError(_explain_flag_error(e, argv)) from e
  if config is None:
    raise UserError("--config is required, e.g. --config configs/shapes_tiny.py:t2i")
  if not values.workdir:
    raise UserError("--workdir is required")
  validate(config)
  config.lock()
  return values


def _refuse_repeated_overrides(argv) -> None:
  """config_flags appends repeated tuple overrides ((8,) then (16,) gives (8, 16)); a
  field given twice is almost surely a mistake, so it is refused."""
  keys = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
  repeated = sorted({key for key in keys if keys.count(key) > 1})
  if repeated:
    raise UserError(f"{', '.join(repeated)} given more than once; give each field once")


def _explain_flag_error(error: Exception, argv) -> str:
  spec = _flag_value(argv, "--config")
  if spec is not None and not pathlib.Path(spec.partition(":")[0]).is_file():
    return f"config file not found: {spec.partition(':')[0]}"
  if spec is not None:
    _replay_overrides(spec, argv)  # raises an unknown key's UserError with a suggestion
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"


def _flag_value(argv, name: str):
  for i, arg in enumerate(argv):
    if arg.startswith(name + "="):
      return arg.split("=", 1)[1]
    if arg == name and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _replay_overrides(spec: str, argv) -> None:
  """Sets each --config.KEY override's field of the plain config to its own value, so an
  unknown key raises `unknown config key 'a.b'; did you mean 'a.c'?` (config.set_field)."""
  config = load_config(spec)
  for arg in argv:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      set_field(config, key, _current_value(config, key))


def _current_value(config, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def run(args) -> int:
  values = parse_flags(args.absl_argv)
  # Imported here so that `lumiere --help` does not pay for orbax, grain and tensorboardX.
  from lumiere_jax.train import loop, metrics  # pylint: disable=import-outside-toplevel
  distributed.initialize(values.coordinator_address, values.num_processes,
                         values.process_id, values.jax_distributed_auto)
  metrics.configure_logging(jax.process_index(), loop.prepare_workdir(values.workdir))
  try:
    result = loop.train(values.config, values.workdir, stop_at_step=values.stop_at_step)
  except loop.TrainingStopped as e:
    print(f"{args._prog}: {e}", file=sys.stderr)
    return 1
  if result.preempted:
    print(f"{args._prog}: preempted; step {result.step} saved in {values.workdir}",
          file=sys.stderr)
  return 0
