"""The `lumiere` console script: thin dispatch to one module per subcommand.

Each module in `lumiere_jax.commands` defines `HELP` (one line), `add_arguments(parser)`
and `run(args) -> int`. Parsing lives here; the work lives in library functions that tests
call directly.
"""

import argparse
import importlib
import sys

from lumiere_jax import runtime
from lumiere_jax.errors import UserError

SUBCOMMANDS = ("train", "generate", "upsample", "animate", "inpaint", "cinemagraph",
               "stylize", "edit", "data", "eval", "demo", "bench", "export")


class OneLineParser(argparse.ArgumentParser):
  """argparse that reports bad arguments as one line and exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
  parser = OneLineParser(prog="lumiere", description="Lumiere video diffusion in JAX.")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=OneLineParser)
  for name in SUBCOMMANDS:
    module = importlib.import_module(f"lumiere_jax.commands.{name}")
    sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(sub)
    sub.set_defaults(_module=module, _prog=sub.prog)
  return parser


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.command is None:
    parser.print_help()
    return 2
  runtime.enable_compilation_cache()
  try:
    return args._module.run(args) or 0
  except UserError as e:
    print(f"{args._prog}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"{args._prog}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
