"""jax.distributed set-up for training, from flags or the launchers' environment.

Settings come from the arguments (command-line flags), else from the variables every
launcher in launch/ sets (LUMIERE_COORDINATOR_ADDRESS, LUMIERE_NUM_PROCESSES,
LUMIERE_PROCESS_ID), else `auto` lets jax detect a TPU pod or SLURM job. With none of
these the run is one process, and still gets a local one-process coordinator: jax's
preemption service lives in the coordination service, and it is what turns a SIGTERM
into orbax's "reached preemption" and a clean save, on a laptop as on a pod.
"""

import os
import socket
from typing import Optional

import jax

from lumiere_jax.errors import UserError

COORDINATOR_ADDRESS = "LUMIERE_COORDINATOR_ADDRESS"
NUM_PROCESSES = "LUMIERE_NUM_PROCESSES"
PROCESS_ID = "LUMIERE_PROCESS_ID"
# A one-process run has no peer whose death the heartbeat could detect; jax's default
# (100 s) aborted a run whose heartbeat thread starved while other jobs held both cores.
LOCAL_HEARTBEAT_TIMEOUT_S = 7 * 24 * 3600


def _setting(value, variable: str) -> Optional[str]:
  return str(value) if value not in (None, "") else os.environ.get(variable) or None


def _integer(value: Optional[str], name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserError(f"{name}={value!r} must be an integer when a coordinator address is "
                    f"given") from None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None,
               auto: bool = False) -> None:
  """Initialises jax.distributed once per process, before any device is touched."""
  # Cross-process collectives of CPU devices (tests, laptops); no effect on TPU or GPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  address = _setting(coordinator_address, COORDINATOR_ADDRESS)
  if address:
    count = _integer(_setting(num_processes, NUM_PROCESSES), "num_processes")
    index = _integer(_setting(process_id, PROCESS_ID), "process_id")
    if not 0 <= index < count:
      raise UserError(f"process_id={index} must be in [0, num_processes={count})")
    jax.distributed.initialize(address, count, index)
  elif auto:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(f"127.0.0.1:{_free_port()}", 1, 0,
                               heartbeat_timeout_seconds=LOCAL_HEARTBEAT_TIMEOUT_S)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
