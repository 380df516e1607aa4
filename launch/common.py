"""What the launchers share: the environment contract with the training entry point, and
bad input reported as one line with exit code 2 before anything starts.

Every launcher gives each training process three variables, and `lumiere train` passes
them to jax.distributed.initialize (no coordinator variable: a single process):
  LUMIERE_COORDINATOR_ADDRESS  host:port of process 0's coordinator service
  LUMIERE_NUM_PROCESSES        how many processes the job has
  LUMIERE_PROCESS_ID           this process's index, 0 .. LUMIERE_NUM_PROCESSES - 1
"""

import argparse
import pathlib
import sys
from typing import List, Sequence, Tuple

COORDINATOR_ADDRESS = "LUMIERE_COORDINATOR_ADDRESS"
NUM_PROCESSES = "LUMIERE_NUM_PROCESSES"
PROCESS_ID = "LUMIERE_PROCESS_ID"


class OneLineParser(argparse.ArgumentParser):
  """argparse whose errors are one line and exit code 2, like the `lumiere` command."""

  def error(self, message):
    fail(self.prog, f"{message} (see '{self.prog} --help')")


def fail(prog: str, message: str):
  """Reports bad input or a missing setting as one line and exits with code 2."""
  print(f"{prog}: error: {message}", file=sys.stderr)
  sys.exit(2)


def prog_name(script: str) -> str:
  return f"launch/{pathlib.Path(script).name}"


def split_command(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(launcher arguments, the command after the first '--')."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  cut = argv.index("--")
  return argv[:cut], argv[cut + 1:]


def distributed_env(coordinator: str, num_processes: int, process_id: int) -> dict:
  return {COORDINATOR_ADDRESS: coordinator, NUM_PROCESSES: str(num_processes),
          PROCESS_ID: str(process_id)}
