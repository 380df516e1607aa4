"""The `lumiere` console script: thin dispatch to one module per subcommand.

Each module in `lumiere_jax.commands` defines `HELP` (one line), `add_arguments(parser)`
and `run(args) -> int`. Parsing lives here; the work lives in library functions that tests
call directly.

Failures: bad input and the other known failures (errors.one_line) are one line on stderr
and exit code 2; `--debug` anywhere on the command line (or LUMIERE_DEBUG=1) prints the
traceback above that line. Ctrl-C is exit code 130 within about a second, at any point
(runtime.handle_interrupts); docs/failures.md lists what each command keeps.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum, frame):
  """Ctrl-C before main() takes it over: nothing has been done, so end at once."""
  del signum, frame
  command = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].isalpha() else ""
  os.write(2, f"lumiere{' ' + command if command else ''}: interrupted\n".encode())
  os._exit(130)  # pylint: disable=protected-access


if __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "lumiere":
  signal.signal(signal.SIGINT, _interrupted_while_starting)

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import logging  # noqa: E402
import traceback  # noqa: E402

from lumiere_jax import errors  # noqa: E402
from lumiere_jax import runtime  # noqa: E402

SUBCOMMANDS = ("train", "generate", "upsample", "animate", "inpaint", "cinemagraph",
               "stylize", "edit", "data", "eval", "demo", "bench", "export")
DEBUG_FLAG = "--debug"
EPILOG = (f"{DEBUG_FLAG} (anywhere on the command line) or {errors.DEBUG_ENV}=1 shows the "
          "traceback behind an error.")


class OneLineParser(argparse.ArgumentParser):
  """argparse that reports bad arguments as one line and exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {errors.flatten(message)} (see '{self.prog} "
                 f"--help')\n")


def build_parser() -> argparse.ArgumentParser:
  parser = OneLineParser(prog="lumiere", description="Lumiere video diffusion in JAX.",
                         epilog=EPILOG)
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=OneLineParser)
  for name in SUBCOMMANDS:
    module = importlib.import_module(f"lumiere_jax.commands.{name}")
    sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(sub)
    sub.set_defaults(_module=module, _prog=sub.prog, _parser=sub)
  return parser


def debug_requested(argv) -> bool:
  return DEBUG_FLAG in argv or os.environ.get(errors.DEBUG_ENV, "") not in ("", "0")


def main(argv=None) -> int:
  """The console script (argv None: the process's own arguments) or a call from a test.
  As a script, a run ended by Ctrl-C skips the interpreter's teardown, which only costs
  time (half a second of jax shutdown) and could crash under XLA threads still running;
  everything worth keeping was saved or written before."""
  if argv is None:
    runtime.restart_with_huge_pages()  # glibc reads its tunables only at start-up
    code = main(sys.argv[1:])
    if code == runtime.EXIT_INTERRUPTED:
      runtime.exit_now(code)
    return code
  argv = list(argv)
  debug = debug_requested(argv)
  # Ctrl-C is taken over first: importing the subcommands (jax, orbax, TFDS) takes
  # seconds, and a KeyboardInterrupt raised in there can be swallowed by a callback.
  words = [a for a in argv if a != DEBUG_FLAG]
  early_prog = f"lumiere {words[0]}" if words and words[0] in SUBCOMMANDS else "lumiere"
  with runtime.handle_interrupts(early_prog):
    parser = build_parser()
    args, unknown = parser.parse_known_args(words)
    if unknown:  # reported by the subcommand's parser, which names the subcommand
      getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
      parser.print_help()
      return 2
    runtime.set_interrupt_prog(args._prog)
    runtime.enable_compilation_cache()
    with warnings_to_stderr(args._prog):
      return run(args, debug)


@contextlib.contextmanager
def warnings_to_stderr(prog: str):
  """The library's warnings (unknown prompt words, skipped clips) as
  `lumiere COMMAND: warning: ...` lines; `lumiere train` installs its own log format."""
  logger = logging.getLogger("lumiere_jax")
  handler = logging.StreamHandler(sys.stderr)
  handler.setLevel(logging.WARNING)
  handler.setFormatter(logging.Formatter(f"{prog}: warning: %(message)s"))
  propagate = logger.propagate
  logger.addHandler(handler)
  logger.propagate = False
  try:
    yield
  finally:
    if handler in logger.handlers:
      logger.removeHandler(handler)
      logger.propagate = propagate


def run(args, debug: bool = False) -> int:
  """The subcommand, with every known failure as one line (exit 2) and Ctrl-C as 130."""
  try:
    runtime.check_xla_flags()  # XLA aborts the process on an unknown option
    runtime.apply_cpu_defaults()  # before the backend starts: this CPU's XLA:CPU options
    runtime.apply_cpu_devices()  # LUMIERE_CPU_DEVICES: a device per core, if asked
    return args._module.run(args) or 0
  except KeyboardInterrupt as e:  # errors.Interrupted says what was kept
    print(f"{args._prog}: {errors.flatten(e) or 'interrupted'}", file=sys.stderr)
    return runtime.EXIT_INTERRUPTED
  except Exception as e:  # pylint: disable=broad-except
    line = errors.one_line(e)
    if line is None:
      raise
    if debug:
      traceback.print_exc()
    print(f"{args._prog}: error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
