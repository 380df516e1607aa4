"""Process-wide settings shared by the CLI and the tests: the persistent compilation
cache, XLA_FLAGS (checked, and this CPU family's XLA:CPU options: apply_cpu_defaults),
glibc's malloc with huge pages (restart_with_huge_pages), and Ctrl-C.

The persistent compilation cache matters on CPU: compiling the tiny model's init alone
takes ~30 s here (its per-parameter threefry graphs dominate), so a second `lumiere`
call with the same shapes should not pay it again.

Ctrl-C. Python's own SIGINT handling (a KeyboardInterrupt in the main thread at its next
bytecode) fails three ways in a JAX program: the main thread can sit inside XLA
(compiling, running a compiled sampling loop) for minutes without running a bytecode; a
KeyboardInterrupt raised inside a callback (jax's gc callback, a host callback) is
printed as "Exception ignored" and swallowed, and the run goes on; and a process that
unwinds while XLA's threads are still compiling can crash in interpreter shutdown. So
`handle_interrupts` (installed by the `lumiere` command) takes SIGINT over:

- The signal only sets a flag; it never raises.
- The code checks the flag at safe points (between sampling steps, after each training
  step, between the clips of a data build) and raises `Interrupted` there, after saving
  what is safe to save (`check_interrupt`).
- A watchdog thread, woken by the signal itself (`signal.set_wakeup_fd`, so even while
  the main thread is inside XLA), ends the process with exit code 130 when no safe point
  is reached within the grace period (INTERRUPT_GRACE_S): it runs the registered
  cleanups (`cleanup_on_exit`: a half-built dataset's staging folder, a workdir this run
  created) and then `os._exit`, which skips the interpreter shutdown that crashes under a
  running compile.
- `shielded()` marks work that must finish once started (writing the outputs, saving a
  checkpoint): the watchdog waits for it. A second Ctrl-C ends the process at once;
  atomic writes and orbax leave only temporary files then, never a half-written output
  or checkpoint. A second SIGTERM does not (timeout(1) sends two: to the command and to
  its process group).

SIGTERM. A one-process training run takes SIGTERM the same way (`stop_on_sigterm`): the
step in flight is saved and the run returns as preempted, or, while nothing can reach a
safe point (compiling), the process ends within the grace with exit code 143, losing
nothing. jax's own preemption service, which several processes need to agree on one step
to save, misses a SIGTERM that lands before a resumed run's first step (its sync point is
then step 1, which a resumed run never reaches), so one process does not use it.
"""

import contextlib
import json
import os
import pathlib
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Optional

from lumiere_jax.errors import Interrupted, UserError

CACHE_ENV = "LUMIERE_COMPILATION_CACHE"  # a directory, or "off"
INTERRUPT_GRACE_S = 1.0  # how long a Ctrl-C may wait for a safe point
GRACE_ENV = "LUMIERE_INTERRUPT_GRACE_S"  # seconds, to wait longer (slow steps, tests)
EXIT_INTERRUPTED = 130   # 128 + SIGINT, what shells report for a process ended by Ctrl-C
EXIT_TERMINATED = 143    # 128 + SIGTERM


def enable_compilation_cache(default_dir: str = "~/.cache/lumiere_jax/xla") -> None:
  """Turns on JAX's persistent compilation cache (keyed by program, flags and version,
  so a stale entry is never used for a different program)."""
  import jax  # pylint: disable=import-outside-toplevel  (`lumiere` installs Ctrl-C first)
  where = os.environ.get(CACHE_ENV, default_dir)
  if where == "off":
    return
  path = pathlib.Path(where).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # an unwritable cache location only costs compile time
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# ---------------------------------------------------------------------------------------
# XLA_FLAGS

XLA_FLAGS_ENV = "XLA_FLAGS"
_KNOWN_FLAGS_FILE = "known_xla_flags.json"  # beside the compilation cache


def check_xla_flags(cache_dir: str = "~/.cache/lumiere_jax") -> None:
  """Refuses, as one line, an XLA_FLAGS option this jaxlib does not know, before anything
  compiles: XLA itself aborts the process on one (a fatal log line and SIGABRT, with no
  Python error to catch) the first time a backend starts. A short child process starts
  the CPU backend under the same flags; the options it accepted (name and value) are
  remembered per jaxlib version, so the check costs one start-up (~2 s) per new option,
  not per command."""
  from lumiere_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  flags = os.environ.get(XLA_FLAGS_ENV, "")
  problem = _xla_flags_problem(flags, cache_dir)
  if problem is not None:
    raise UserError(problem)


def _xla_flags_problem(flags: str, cache_dir: str) -> Optional[str]:
  """None when the CPU backend starts under XLA_FLAGS=`flags` (check_xla_flags), else
  one line saying why not."""
  options = set(flags.split())
  if not options:
    return None
  import jaxlib  # pylint: disable=import-outside-toplevel
  record = pathlib.Path(cache_dir).expanduser() / _KNOWN_FLAGS_FILE
  try:
    known = json.loads(record.read_text()).get(jaxlib.__version__, [])
  except (OSError, ValueError, AttributeError):
    known = []
  if options <= set(known):
    return None
  env = dict(os.environ, JAX_PLATFORMS="cpu", **{XLA_FLAGS_ENV: flags})
  child = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
  if child.returncode != 0:
    text = child.stderr.decode("utf-8", "replace")
    unknown = re.search(r"Unknown flags? in XLA_FLAGS: (.*)", text)
    if unknown:
      return (f"{XLA_FLAGS_ENV} has options this jaxlib ({jaxlib.__version__}) "
              f"does not know: {unknown.group(1).strip()}")
    fatal = re.findall(r"^F\d{4} [^\]]*\] (.*)$", text, flags=re.M)
    reason = fatal[-1] if fatal else (text.strip().splitlines() or ["no message"])[-1]
    return f"the CPU backend does not start with {XLA_FLAGS_ENV}={flags!r}: {reason}"
  try:
    record.parent.mkdir(parents=True, exist_ok=True)
    try:
      table = json.loads(record.read_text())
    except (OSError, ValueError):
      table = {}
    table[jaxlib.__version__] = sorted(options | set(known))
    temporary = record.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(table))
    os.replace(temporary, record)
  except OSError:
    pass  # an unwritable cache only costs the check again next time
  return None


# XLA:CPU options by CPU family, applied only where they were measured
# (benchmarks/RESULTS.md, "XLA:CPU's convolution path", "YNNPACK off on an AVX-512 Xeon").
# On x86 CPUs with AVX2, XLA's YNNPACK library fusions (jaxlib 0.10) run the 3x3
# convolutions with their gradients slower than XLA's own convolutions, so they are turned
# off: on an AVX2-only AMD EPYC the peer-matched train step 1.98 -> 1.21 s, the sampling
# step 0.44 -> 0.22 s, the shapes t2v train step 7-9 -> 3.8 s; on an Intel Xeon with
# AVX-512 and AMX the train step 0.79 -> 0.48 s, the sampling step 0.155 -> 0.102 s.
CPU_DEFAULTS_ENV = "LUMIERE_XLA_CPU_DEFAULTS"  # "off": XLA's own defaults everywhere
X86_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset:
  """The CPU's feature flags (Linux /proc/cpuinfo); empty where that cannot be read."""
  try:
    text = pathlib.Path(cpuinfo).read_text()
  except OSError:
    return frozenset()
  line = re.search(r"^flags\s*:(.*)$", text, flags=re.M)
  return frozenset(line.group(1).split()) if line else frozenset()


def cpu_default_flags(features: frozenset) -> tuple:
  """The XLA_FLAGS options lumiere adds on a CPU with these feature flags."""
  if "avx2" in features:
    return X86_FLAGS
  return ()


def apply_cpu_defaults(cache_dir: str = "~/.cache/lumiere_jax",
                       features: Optional[frozenset] = None) -> tuple:
  """Adds this CPU's default XLA:CPU options (cpu_default_flags) to XLA_FLAGS, before the
  backend starts, except options the user set (by name) or with LUMIERE_XLA_CPU_DEFAULTS
  =off; an option this jaxlib does not take is left out. Returns the options added."""
  if os.environ.get(CPU_DEFAULTS_ENV, "") == "off":
    return ()
  flags = os.environ.get(XLA_FLAGS_ENV, "")
  named = {option.split("=")[0] for option in flags.split()}
  added = tuple(option for option in cpu_default_flags(
      cpu_flags() if features is None else features) if option.split("=")[0] not in named)
  if not added:
    return ()
  combined = " ".join((flags, *added)).strip()
  if _xla_flags_problem(combined, cache_dir) is not None:
    return ()  # a jaxlib without the option: its own defaults
  os.environ[XLA_FLAGS_ENV] = combined
  return added


# One XLA:CPU device per core (benchmarks/RESULTS.md, "One XLA:CPU device per core").
# XLA:CPU runs one program's ops one after the other, each split over the cores by its
# own thread pool, and some split badly: a 3x3 kernel gradient at 32x32 runs on one core
# of two. With a device per core and each device's ops on one thread, the mesh's data
# axis gives each core its share of the batch and every op keeps its core busy: on 2
# cores of an Intel(R) Xeon(R) Processor (AVX-512, AMX) the peer-matched train step
# 0.434 -> 0.408 s, `lumiere bench tiny-t2v --batch 8` 2.0-2.3 -> 1.70 s, the shipped
# recipe's stage 8 9-12% more steps per hour.
# Opt-in, since it changes jax.devices() and so every mesh; sampling is not faster.
CPU_DEVICES_ENV = "LUMIERE_CPU_DEVICES"  # "cores", or a device count
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def available_cores() -> int:
  """The cores this process may run on (its CPU affinity, as `taskset` sets it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_device_flags(value: str, cores: int) -> tuple:
  """The XLA_FLAGS options for LUMIERE_CPU_DEVICES=`value` ('' or unset: none; 'cores':
  one device per core; N: N devices), each device's ops on one thread."""
  if value == "":
    return ()
  if value == "cores":
    count = cores
  else:
    try:
      count = int(value)
    except ValueError:
      count = 0
    if count < 1:
      raise UserError(f"{CPU_DEVICES_ENV}={value!r}: give 'cores' or a device count >= 1")
  return (f"{DEVICE_COUNT_FLAG}={count}", "--xla_cpu_multi_thread_eigen=false")


def apply_cpu_devices() -> tuple:
  """Adds cpu_device_flags(LUMIERE_CPU_DEVICES) to XLA_FLAGS before the backend starts;
  returns them. A device count already in XLA_FLAGS is a conflict, said in one line."""
  added = cpu_device_flags(os.environ.get(CPU_DEVICES_ENV, "").strip(), available_cores())
  if not added:
    return ()
  flags = os.environ.get(XLA_FLAGS_ENV, "")
  if any(option.split("=")[0] == DEVICE_COUNT_FLAG for option in flags.split()):
    raise UserError(f"{CPU_DEVICES_ENV} and {XLA_FLAGS_ENV} both set the CPU device count "
                    f"({DEVICE_COUNT_FLAG}); give one")
  os.environ[XLA_FLAGS_ENV] = " ".join((flags, *added)).strip()
  return added


# glibc's malloc with transparent huge pages (benchmarks/RESULTS.md, "Fresh pages at every
# step"). XLA:CPU allocates a program's temporary buffer and its outputs anew at every
# call (the peer-matched train step: 150 MB of temporaries and three 38 MB buffers per
# device), and glibc serves allocations that large with mmap and returns them with
# munmap, so every step touches them as new 4 KiB pages: 73k page faults and 0.20 CPU
# seconds in the kernel per step of 0.65 s on 2 cores. glibc's hugetlb tunable makes
# malloc ask for transparent huge pages on those mappings (where the kernel's THP mode
# is "madvise"), which glibc reads only at start-up: so the `lumiere` command re-executes
# itself once, before jax starts, with the tunable added.
HUGE_PAGES_ENV = "LUMIERE_HUGE_PAGES"  # "off": glibc's own malloc settings
TUNABLES_ENV = "GLIBC_TUNABLES"
HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"); "" where it
  cannot be read (not Linux)."""
  try:
    chosen = re.search(r"\[(\w+)\]", pathlib.Path(path).read_text())
  except OSError:
    return ""
  return chosen.group(1) if chosen else ""


def malloc_tunables(environ, libc: tuple, thp: str) -> Optional[str]:
  """The GLIBC_TUNABLES value a process should start with, or None where there is nothing
  to add: turned off, a THP mode other than "madvise" ("always" gives huge pages already,
  "never" none at all), a C library other than glibc 2.35 or later (the tunable's first
  release), or a hugetlb setting of the user's own."""
  if environ.get(HUGE_PAGES_ENV, "") == "off" or thp != "madvise":
    return None
  name, version = libc
  try:
    release = tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    return None
  if name != "glibc" or release < (2, 35):
    return None
  current = environ.get(TUNABLES_ENV, "")
  if HUGETLB_TUNABLE in current:
    return None
  return ":".join(filter(None, (current, f"{HUGETLB_TUNABLE}=1")))


def restart_with_huge_pages() -> None:
  """Re-executes this process, same interpreter and arguments, with malloc_tunables'
  value in GLIBC_TUNABLES; returns where there is nothing to add. A console script calls
  it first, before jax starts; the restarted process finds the tunable set and goes on."""
  value = malloc_tunables(os.environ, platform.libc_ver(), thp_mode())
  if value is None or not sys.executable or not getattr(sys, "orig_argv", None):
    return
  os.environ[TUNABLES_ENV] = value
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


# ---------------------------------------------------------------------------------------
# Ctrl-C


class _Interrupts:
  """The SIGINT flag, its watchdog and what must run before a hard exit."""

  def __init__(self, prog: str, grace: float):
    self.prog = prog
    self.grace = self.base_grace = grace
    self.requested = threading.Event()
    self.terminated = threading.Event()  # the request came as SIGTERM
    self.watch_sigterm = False
    self.lock = threading.Lock()
    self.signals = 0
    self.acknowledged = False
    self.shield_depth = 0
    self.cleanups = []
    self.reader, self.writer = socket.socketpair()
    self.writer.setblocking(False)
    self.previous_handler = self.previous_fd = None
    self.watcher = threading.Thread(target=self._watch, name="lumiere-interrupts",
                                    daemon=True)

  def install(self) -> None:
    self.previous_handler = signal.signal(signal.SIGINT, self._ignore)
    self.previous_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
    self.watcher.start()

  def uninstall(self) -> None:
    signal.set_wakeup_fd(self.previous_fd)
    signal.signal(signal.SIGINT, self.previous_handler)
    self.writer.close()  # the watcher's recv returns b"" and it ends
    self.watcher.join(timeout=1.0)
    self.reader.close()

  @staticmethod
  def _ignore(signum, frame):
    """The Python-level handler: the watcher does the work; raising here could land in a
    gc or host callback, where the exception is swallowed."""
    del signum, frame

  def _watch(self) -> None:
    while True:
      try:
        data = self.reader.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        if signum == signal.SIGINT or (signum == signal.SIGTERM and self.watch_sigterm):
          self._on_signal(signum)

  def _on_signal(self, signum: int) -> None:
    with self.lock:
      self.signals += 1
      first = self.signals == 1
    if signum == signal.SIGTERM:
      self.terminated.set()
    self.requested.set()
    if not first:
      # A second Ctrl-C stops at once. A second SIGTERM is the same request: timeout(1)
      # sends its signal to the command and then to the command's process group, so
      # every timed stage gets two within microseconds, and stopping at once there would
      # lose the step in flight that the first asked to save.
      if signum == signal.SIGINT:
        self.hard_exit("interrupted again; stopped at once")
      return
    threading.Thread(target=self._deadline, name="lumiere-interrupt-deadline",
                     daemon=True).start()

  def _deadline(self) -> None:
    """Ends the process if the main thread reaches no safe point within the grace."""
    deadline = time.monotonic() + self.grace
    while True:
      time.sleep(0.02)
      with self.lock:
        if self.acknowledged:
          return
        if self.shield_depth:
          deadline = time.monotonic() + self.grace
          continue
        grace_over = time.monotonic() >= deadline
      if grace_over:
        self.hard_exit("terminated" if self.terminated.is_set() else "interrupted")

  def hard_exit(self, message: str) -> None:
    for cleanup in reversed(list(self.cleanups)):
      try:
        cleanup()
      except Exception:  # pylint: disable=broad-except
        pass  # the process ends now; a cleanup that fails must not keep it alive
    _flush_standard_streams()
    os.write(2, f"{self.prog}: {message}\n".encode())
    exit_now(EXIT_TERMINATED if self.terminated.is_set() else EXIT_INTERRUPTED)


def _flush_standard_streams() -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except
      pass


def exit_now(code: int) -> None:
  """Ends the process without the interpreter's teardown (see cli.main)."""
  _flush_standard_streams()
  os._exit(code)  # pylint: disable=protected-access


_active: Optional[_Interrupts] = None


@contextlib.contextmanager
def handle_interrupts(prog: str, grace: Optional[float] = None):
  """Takes SIGINT over for the duration (see the module docstring). Only the main thread
  can install signal handlers; elsewhere this does nothing. The grace period defaults to
  $LUMIERE_INTERRUPT_GRACE_S, else INTERRUPT_GRACE_S."""
  global _active  # pylint: disable=global-statement
  if _active is not None or threading.current_thread() is not threading.main_thread():
    yield
    return
  if grace is None:
    try:
      grace = float(os.environ.get(GRACE_ENV, INTERRUPT_GRACE_S))
    except ValueError:
      grace = INTERRUPT_GRACE_S
  interrupts = _Interrupts(prog, grace)
  interrupts.install()
  _active = interrupts
  try:
    yield
  finally:
    _active = None
    interrupts.uninstall()


def set_interrupt_prog(prog: str) -> None:
  """The command name of the line printed when Ctrl-C ends the process at once."""
  interrupts = _active
  if interrupts is not None:
    interrupts.prog = prog


def interrupt_requested() -> bool:
  """Whether Ctrl-C was pressed, or SIGTERM under `stop_on_sigterm` (cheap: called from
  inside compiled loops)."""
  interrupts = _active
  return (interrupts is not None and interrupts.requested.is_set()) or \
      _sigterm_received.is_set()


def terminate_requested() -> bool:
  """Whether the stop asked for came as SIGTERM (under `stop_on_sigterm`)."""
  interrupts = _active
  return (interrupts is not None and interrupts.terminated.is_set()) or \
      _sigterm_received.is_set()


def acknowledge_interrupt() -> None:
  """The main thread is handling the interrupt: the watchdog stands down (a second
  Ctrl-C still ends the process at once)."""
  interrupts = _active
  if interrupts is not None:
    with interrupts.lock:
      interrupts.acknowledged = True


def check_interrupt(message: str = "interrupted") -> None:
  """Raises Interrupted(message) if Ctrl-C was pressed: call it at safe points."""
  if interrupt_requested():
    acknowledge_interrupt()
    raise Interrupted(message)


def set_interrupt_grace(seconds: float) -> None:
  """How long a Ctrl-C may wait for the next safe point (e.g. a few training steps)."""
  interrupts = _active
  if interrupts is not None:
    interrupts.grace = max(interrupts.base_grace, seconds)


@contextlib.contextmanager
def shielded():
  """Work that must finish once started (writing outputs, a checkpoint): a Ctrl-C waits
  for it, then the next check_interrupt raises. A second Ctrl-C ends the process."""
  interrupts = _active
  if interrupts is None:
    yield
    return
  with interrupts.lock:
    interrupts.shield_depth += 1
  try:
    yield
  finally:
    with interrupts.lock:
      interrupts.shield_depth -= 1


_sigterm_received = threading.Event()  # stop_on_sigterm's flag without handle_interrupts


def _on_sigterm(signum, frame) -> None:
  """The Python-level SIGTERM handler. Under handle_interrupts the watcher, woken through
  the wakeup fd even while the main thread is inside XLA, does the work; otherwise this
  flag is read at the next safe point."""
  del signum, frame
  if _active is None:
    _sigterm_received.set()


@contextlib.contextmanager
def stop_on_sigterm():
  """Within, SIGTERM asks for a stop at the next safe point, like Ctrl-C, and
  `terminate_requested` says it was SIGTERM (see the module docstring). For one-process
  training; several processes need jax's preemption service instead. Only the main thread
  can install signal handlers; elsewhere this does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  interrupts = _active
  _sigterm_received.clear()
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  if interrupts is not None:
    interrupts.watch_sigterm = True
  try:
    yield
  finally:
    if interrupts is not None:
      interrupts.watch_sigterm = False
    # None: the previous handler was not Python's (e.g. jax's preemption notifier, which
    # this run does not use); the default action is the safe one to leave behind.
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    _sigterm_received.clear()


@contextlib.contextmanager
def cleanup_on_exit(cleanup: Callable[[], None]):
  """Runs `cleanup` if the process is ended by Ctrl-C while inside (the watchdog's hard
  exit skips `finally` blocks, so whatever they would undo is undone here)."""
  interrupts = _active
  if interrupts is None:
    yield
    return
  interrupts.cleanups.append(cleanup)
  try:
    yield
  finally:
    interrupts.cleanups.remove(cleanup)
