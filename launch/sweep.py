"""Expand the sweep a config file declares into training runs and run them one after the
other, each in its own workdir, after checking every run's config first.

  python launch/sweep.py --config shapes_tiny:t2i --workdir-root workdirs/sweep1 \
      --config.train.data_dir=data/shapes         # fixed overrides, the same for every run
  python launch/sweep.py ... --dry-run            # print the commands only
  python launch/sweep.py ... --launcher "python launch/local.py --num-processes 2 --"

The sweep format. A config file declares its sweep next to get_config, as plain data:

  def get_sweep(arg):          # arg: the variant, as for get_config ('' when none)
    return [
        {"train.learning_rate": [1e-4, 3e-4]},                     # an axis
        {"data.num_frames": [16, 32], "data.batch_size": [8, 4]},  # zipped keys
    ]

The runs are the product over the list's entries; the keys inside one entry vary together
(zip), so their lists have one length. The example gives 2 x 2 = 4 runs. Keys are dotted
config fields and values are what the field holds (a tuple field takes a tuple or list).

Each run is named <index>-<field>=<value>-... (the last part of each dotted key, the whole
key where two would collide; characters outside [A-Za-z0-9._=+-] become '_'); its workdir
is <workdir-root>/<name>, and it runs
  lumiere train --config SPEC --workdir WORKDIR --config.<key>=<value> ...
with the fixed overrides first, then the run's (after the --launcher prefix, if given).
Before anything runs, every run's overrides are applied to the config and validated
(as `lumiere train` does): a key that is not in the config, a value of the wrong
type, an invalid combination or a fixed override of a swept key stops the sweep with one
line and exit code 2. A run that fails does not stop the others; the sweep then exits 1.
"""

import ast
import itertools
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List

import common
from lumiere_jax import config as config_lib
from lumiere_jax.errors import UserError

PROG = common.prog_name(__file__)


def parse_args(argv):
  parser = common.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, metavar="NAME[:VARIANT]",
                      help="a shipped config or a file PATH.py[:VARIANT]")
  parser.add_argument("--workdir-root", required=True, help="one workdir per run in here")
  parser.add_argument("--launcher", default="",
                      help="command prefix for every run, e.g. 'python launch/local.py --'")
  parser.add_argument("--dry-run", action="store_true", help="print the commands only")
  config_lib.accept_overrides(parser)  # fixed for every run (data_dir, init_checkpoint)
  return parser.parse_args(argv)


def declared_sweep(spec: str):
  """The value of get_sweep(variant) in the config file named by `spec`."""
  module, variant = config_lib.config_module(spec)
  if not hasattr(module, "get_sweep"):
    raise UserError(f"config file {module.__file__} defines no get_sweep(arg); "
                    f"see launch/sweep.py for the format")
  try:
    return module.get_sweep(variant)
  except Exception as e:  # a broken sweep is the user's input
    raise UserError(f"{module.__file__}: get_sweep({variant!r}) failed: "
                    f"{type(e).__name__}: {e}") from e


def expand(sweep) -> List[Dict[str, object]]:
  """{key: value} overrides of every run: the product over the entries, zip within one."""
  if not isinstance(sweep, (list, tuple)) or not sweep:
    raise UserError("get_sweep must return a non-empty list of {key: [values]} entries")
  seen = set()
  axes = []
  for i, entry in enumerate(sweep):
    if not isinstance(entry, dict) or not entry:
      raise UserError(f"sweep entry {i} is not a non-empty {{key: [values]}} dict")
    lengths = set()
    for key, values in entry.items():
      if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"sweep key {key!r} needs a non-empty list of values")
      if key in seen:
        raise UserError(f"sweep key {key!r} appears in two entries")
      seen.add(key)
      lengths.add(len(values))
    if len(lengths) > 1:
      raise UserError(f"sweep entry {i} zips lists of different lengths: "
                      f"{ {k: len(v) for k, v in entry.items()} }")
    axes.append([dict(zip(entry, values)) for values in zip(*entry.values())])
  return [{k: v for part in combination for k, v in part.items()}
          for combination in itertools.product(*axes)]


def override_strings(overrides: Dict[str, object]) -> List[str]:
  """`key=value` strings that the config's override parser (a Python literal, else the
  raw string) reads back as the same values."""
  return [f"{key}={_literal(value)}" for key, value in overrides.items()]


def _literal(value) -> str:
  if isinstance(value, str) and value == value.strip():
    try:
      ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return value  # read back as the raw string; no quotes needed
  return repr(value)


def run_names(runs: List[Dict[str, object]]) -> List[str]:
  """Workdir-safe names that say what each run sets; the index keeps them unique."""
  keys = list(runs[0])
  last = [key.rsplit(".", 1)[-1] for key in keys]
  short = {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}
  width = len(str(len(runs) - 1))
  names = []
  for index, run in enumerate(runs):
    parts = [f"{index:0{width}d}"] + [f"{short[k]}={_plain(v)}" for k, v in run.items()]
    names.append(re.sub(r"[^A-Za-z0-9._=+-]+", "_", "-".join(parts)).strip("_"))
  return names


def _plain(value) -> str:
  return value if isinstance(value, str) else repr(value)


def validate_run(spec: str, overrides: List[str]) -> None:
  """What `lumiere train` checks before it starts: the overrides' keys and types, then
  the model, train and diffusion sections (commands/train.py:parse_flags)."""
  config_lib.load_config(spec, overrides)


def run_commands(spec: str, workdir_root: str, launcher: List[str], fixed: List[str]):
  """[(name, command)] for every run, each run's config validated first."""
  runs = expand(declared_sweep(spec))
  swept = set(runs[0]).intersection(item.partition("=")[0].strip() for item in fixed)
  if swept:
    raise UserError(f"fixed override of swept key(s) {sorted(swept)}; the sweep sets them")
  commands = []
  for name, run in zip(run_names(runs), runs):
    overrides = [*fixed, *override_strings(run)]
    try:
      validate_run(spec, overrides)
    except UserError as e:
      raise UserError(f"sweep run {name}: {e}") from e
    workdir = str(pathlib.Path(workdir_root) / name)
    commands.append((name, [*launcher, "lumiere", "train", "--config", spec,
                            "--workdir", workdir, *config_lib.as_flags(overrides)]))
  return commands


def run(args) -> int:
  try:
    fixed = config_lib.parse_overrides(args.config_overrides)
    validate_run(args.config, fixed)  # before looking for a sweep in the file
    commands = run_commands(args.config, args.workdir_root, shlex.split(args.launcher),
                            fixed)
  except UserError as e:
    common.fail(PROG, str(e))
  if args.dry_run:
    for _, command in commands:
      print(shlex.join(command))
    return 0
  executable = commands[0][1][0]
  if shutil.which(executable) is None:
    common.fail(PROG, f"{executable!r} not found on PATH")
  failed = []
  for i, (name, command) in enumerate(commands):
    print(f"{PROG}: run {i + 1}/{len(commands)} {name}: {shlex.join(command)}",
          file=sys.stderr, flush=True)
    code = subprocess.run(command).returncode
    if code:
      failed.append(f"{name} (exit {code})")
  if failed:
    print(f"{PROG}: {len(failed)} of {len(commands)} runs failed: {', '.join(failed)}",
          file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  sys.exit(main())
