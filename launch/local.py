"""Run N processes of one command on this machine as a jax.distributed job (CPU), the way
a pod runs one process per host: for testing multi-process code without a pod.

  python launch/local.py --num-processes 2 -- \
      lumiere train --config shapes_tiny:t2v --workdir workdirs/tiny_2proc

Each process gets the distributed environment (launch/common.py) with the coordinator on
127.0.0.1 at a free port, JAX_PLATFORMS=cpu and --devices-per-process forced host devices.
Output lines are prefixed with the process index ("[1] ...") and, with --log-dir, also
written to process_<i>.log there. When a process fails the others are stopped (a
jax.distributed peer would otherwise wait for it forever) and the launcher exits with the
failed process's code; SIGTERM or SIGINT to the launcher is passed on to every process.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import common

PROG = common.prog_name(__file__)
POLL_SECONDS = 0.1


def parse_args(argv):
  launcher_args, command = common.split_command(argv)
  parser = common.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1,
                      help="forced CPU devices in each process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--log-dir", help="also write each process's output to this folder")
  parser.add_argument("--grace-seconds", type=float, default=10.0,
                      help="how long stopped processes get to exit before SIGKILL")
  parser.add_argument("--dry-run", action="store_true",
                      help="print each process's environment and command, run nothing")
  args = parser.parse_args(launcher_args)
  if not command:
    common.fail(PROG, "no command to run; usage: launch/local.py [options] -- COMMAND ...")
  if args.num_processes < 1 or args.devices_per_process < 1:
    common.fail(PROG, "--num-processes and --devices-per-process must be >= 1")
  args.command = command
  return args


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict, port: int, num_processes: int, process_id: int,
                devices: int) -> dict:
  """The parent's environment plus the distributed variables and a CPU device count
  (replacing any device count already in XLA_FLAGS)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", base.get("XLA_FLAGS", ""))
  env = dict(base, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())
  env.update(common.distributed_env(f"127.0.0.1:{port}", num_processes, process_id))
  return env


class ProcessGroup:
  """The launched processes, their output threads, and stopping them all."""

  def __init__(self, command, envs, log_dir):
    self.lock = threading.Lock()
    self.processes, self.threads = [], []
    for index, env in enumerate(envs):
      log = open(os.path.join(log_dir, f"process_{index}.log"), "w") if log_dir else None
      # Own session: a terminal's Ctrl-C reaches only the launcher, which decides.
      process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 text=True, errors="replace", start_new_session=True)
      thread = threading.Thread(target=self._relay, args=(index, process.stdout, log),
                                daemon=True)
      thread.start()
      self.processes.append(process)
      self.threads.append(thread)

  def _relay(self, index, stream, log):
    for line in stream:
      with self.lock:
        sys.stdout.write(f"[{index}] {line}")
        sys.stdout.flush()
      if log:
        log.write(line)
        log.flush()
    if log:
      log.close()

  def first_failure(self):
    """(index, exit code) of the first process that exited non-zero, else None."""
    for index, process in enumerate(self.processes):
      code = process.poll()
      if code:
        return index, code
    return None

  def all_done(self) -> bool:
    return all(p.poll() is not None for p in self.processes)

  def stop(self, grace_seconds: float):
    """SIGTERM to every process still running (and its children), SIGKILL after grace."""
    self._signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while not self.all_done() and time.monotonic() < deadline:
      time.sleep(POLL_SECONDS)
    self._signal_all(signal.SIGKILL)

  def _signal_all(self, signum):
    for process in self.processes:
      if process.poll() is None:
        try:
          os.killpg(process.pid, signum)
        except ProcessLookupError:
          pass

  def wait(self):
    for process in self.processes:
      process.wait()
    for thread in self.threads:
      thread.join()


def exit_code(code: int) -> int:
  """A process killed by signal N (Popen code -N) reports 128 + N, as shells do."""
  return 128 - code if code < 0 else code


def run(args) -> int:
  port = args.port or free_port()
  envs = [process_env(dict(os.environ), port, args.num_processes, i, args.devices_per_process)
          for i in range(args.num_processes)]
  if args.dry_run:
    for env in envs:
      changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
      print(" ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(changed.items())),
            shlex.join(args.command))
    return 0
  if args.log_dir:
    os.makedirs(args.log_dir, exist_ok=True)

  received = []
  def on_signal(signum, frame):
    del frame
    received.append(signum)
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, on_signal)

  try:
    group = ProcessGroup(args.command, envs, args.log_dir)
  except OSError as e:
    common.fail(PROG, f"cannot start {args.command[0]!r}: {e.strerror}")
  while not group.all_done() and not received and not group.first_failure():
    time.sleep(POLL_SECONDS)
  failure = group.first_failure()
  if received:
    print(f"{PROG}: received signal {received[0]}; stopping all processes", file=sys.stderr)
  elif failure:
    print(f"{PROG}: process {failure[0]} exited with code {exit_code(failure[1])}; "
          f"stopping the others", file=sys.stderr)
  group.stop(args.grace_seconds)
  group.wait()
  if received:
    return 128 + received[0]
  return exit_code(failure[1]) if failure else 0


def main(argv=None) -> int:
  return run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
  sys.exit(main())
