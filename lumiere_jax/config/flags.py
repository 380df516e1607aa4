"""The one override syntax of every command that takes a config: `--config.a.b=VALUE`.

argparse cannot declare these flags (their names are the config's fields), so
`accept_overrides` takes them out of the command line before argparse parses the rest
and keeps them, as given, in `args.config_overrides`; `parse_overrides` turns them into
the `a.b=value` strings that load_config applies (a Python literal, else the raw text).
"""

import argparse
import sys
from typing import Iterable, List, Sequence

from lumiere_jax.errors import UserError

PREFIX = "--config."
HELP = """--config.a.b=VALUE  override any config field (repeatable); VALUE is a Python
                    literal, else text: --config.train.num_steps=100"""


def accept_overrides(parser: argparse.ArgumentParser) -> None:
  """Lets `--config.a.b=VALUE` through `parser` into args.config_overrides, and lists
  the syntax in its --help."""
  parser.add_argument_group("config overrides", HELP)
  parse_known_args = parser.parse_known_args

  def parse_with_overrides(args=None, namespace=None):
    args = sys.argv[1:] if args is None else list(args)
    namespace, rest = parse_known_args([a for a in args if not a.startswith(PREFIX)],
                                       namespace)
    namespace.config_overrides = [a for a in args if a.startswith(PREFIX)]
    return namespace, rest

  parser.parse_known_args = parse_with_overrides


def parse_overrides(flags: Iterable[str]) -> List[str]:
  """`--config.a.b=VALUE` flags -> `a.b=VALUE` overrides. A field given twice is almost
  surely a mistake (which one wins?), so it is refused, as is a flag without a value."""
  overrides = []
  for flag in flags:
    key, sep, value = flag[len(PREFIX):].partition("=")
    if not flag.startswith(PREFIX) or not sep or not key:
      raise UserError(f"{flag}: write a config override as --config.a.b=VALUE")
    overrides.append(f"{key}={value}")
  keys = [o.partition("=")[0] for o in overrides]
  repeated = sorted({PREFIX + key for key in keys if keys.count(key) > 1})
  if repeated:
    raise UserError(f"{', '.join(repeated)} given more than once; give each field once")
  return overrides


def as_flags(overrides: Sequence[str]) -> List[str]:
  """`a.b=VALUE` overrides -> the `--config.a.b=VALUE` flags that give them."""
  return [PREFIX + o for o in overrides]
