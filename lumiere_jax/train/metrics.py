"""Training metrics: interval summaries, throughput, FLOPs and MFU, written to tensorboard
(tensorboardX) and the log by process 0.

Per-step metrics stay on the devices until a log step; then the whole interval is fetched
at once, so the steps in between never wait for the host.
"""

import json
import logging
import pathlib
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2

from lumiere_jax.bench import flops as flops_lib

log = logging.getLogger(__name__)

# bf16 dense peak FLOP/s per device, matched as substrings of jax's device_kind
# (lower-cased), most specific first.
PEAK_FLOPS = (("v6 lite", 918e12), ("v6e", 918e12), ("v5 lite", 197e12), ("v5e", 197e12),
              ("v5p", 459e12), ("v5", 459e12), ("v4", 275e12), ("h200", 989e12),
              ("h100", 989e12), ("a100", 312e12))


def configure_logging(process_index: int, workdir=None) -> None:
  """Terminal: the library's progress lines (std logging under `lumiere_jax`) on stderr,
  from process 0 only. Everything else that logs through Python (orbax, grain, jax, with
  their warnings, Python's `warnings` and background-thread tracebacks) goes to WORKDIR/logs/process_N.log,
  so the terminal shows progress and, on failure, the one line that says why."""
  logger = logging.getLogger("lumiere_jax")
  logger.setLevel(logging.INFO if process_index == 0 else logging.WARNING)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  logger.handlers = [handler]
  logger.propagate = False
  if workdir is not None:
    logs = pathlib.Path(workdir) / "logs"
    logs.mkdir(exist_ok=True)
    handler = logging.FileHandler(logs / f"process_{process_index}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    # The log file shares the workdir's disk: when that is full, a failed log write must
    # stay silent instead of printing a traceback per log call.
    logging.raiseExceptions = False
    # Python warnings too (e.g. "coroutine ... was never awaited" when orbax's event loop
    # is torn down after a failed save): to the log, not after the one line that says why.
    logging.captureWarnings(True)
    if not getattr(sys.unraisablehook, "diverts_closed_loop_reports", False):
      sys.unraisablehook = closed_loop_reports_to_log(sys.unraisablehook)


def stop_logging_to(workdir) -> None:
  """Detaches the root logger's files under `workdir`, which is about to be removed: a
  late record of a background thread (orbax's event loop) must neither fail on the
  deleted file nor fall through to the terminal (logging's last resort)."""
  workdir = pathlib.Path(workdir).absolute()
  root = logging.getLogger()
  for handler in list(root.handlers):
    if (isinstance(handler, logging.FileHandler)
        and pathlib.Path(handler.baseFilename).is_relative_to(workdir)):
      root.removeHandler(handler)
      try:
        handler.close()  # flushes: may fail on the full disk that ended the run
      except OSError:
        pass
  if not root.handlers:
    root.addHandler(logging.NullHandler())


def closed_loop_reports_to_log(hook):
  """`hook` (a sys.unraisablehook), less tensorstore's "Event loop is closed" reports,
  which go to the log file instead.

  When one array write of an orbax save fails (a full disk), orbax's event loop ends with
  the other writes still running; as each finishes, tensorstore's thread calls
  `loop.call_soon_threadsafe` on the closed loop and reports the RuntimeError as
  unraisable, which the default hook prints as a bare traceback: hundreds of them around
  the one line that says what happened. Nothing in them is actionable (the save already
  failed; the newest complete checkpoint is intact)."""

  def divert(report) -> None:
    if (isinstance(report.exc_value, RuntimeError)
        and str(report.exc_value) == "Event loop is closed"):
      logging.getLogger("tensorstore").info(
          "after a failed save", exc_info=(report.exc_type, report.exc_value,
                                           report.exc_traceback))
    else:
      hook(report)

  divert.diverts_closed_loop_reports = True
  return divert


def peak_flops_per_device(configured: float, device_kind: str) -> Optional[float]:
  """The configured peak, else the table's entry for this device kind, else None."""
  if configured > 0:
    return configured
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS if name in kind), None)


def model_flops_per_step(config) -> int:
  """Analytic model FLOPs of one train step on the global batch (forward and backward of
  the denoiser, counting only the gradients the stage computes; bench/flops.py)."""
  return flops_lib.model_flops(config, config.data.batch_size).train_step


def summarize(step_metrics: Sequence[dict]) -> dict:
  """Means over an interval of fetched per-step metrics; non-finite steps are counted,
  and left out of the means so one skipped step does not hide the interval's loss."""
  finite = np.array([bool(m["finite"]) for m in step_metrics])
  summary = {"nonfinite_steps": float((~finite).sum())}
  for name in step_metrics[0]:
    if name == "finite":
      continue
    values = np.array([float(m[name]) for m in step_metrics])
    summary[name] = float(values[finite].mean()) if finite.any() else float("nan")
  return summary


def throughput(steps: int, seconds: float, batch_size: int, flops_per_step: int,
               peak_per_device: Optional[float], num_devices: int) -> dict:
  rate = steps / seconds
  result = {"steps_per_s": rate, "examples_per_s": rate * batch_size,
            "flops_per_step": float(flops_per_step),
            "achieved_flops_per_s": rate * flops_per_step}
  if peak_per_device:
    result["mfu"] = rate * flops_per_step / (peak_per_device * num_devices)
  return result


METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Tensorboard scalars under WORKDIR/tensorboard, the same as JSON lines in
  WORKDIR/metrics.jsonl (plots and reports without a tensorboard reader), and one log line
  per log step; on process 0 only (every process has the same replicated metrics).

  The event file is written here, in the caller's thread, not by tensorboardX's
  SummaryWriter: its background thread and exit hook print tracebacks of their own when
  the disk is full, where this raises the one error the run reports."""

  def __init__(self, workdir):
    self.enabled = jax.process_index() == 0
    self.workdir = pathlib.Path(workdir)
    self.events = self.lines = None
    if self.enabled:
      folder = pathlib.Path(workdir) / "tensorboard"
      folder.mkdir(exist_ok=True)
      self.lines = open(pathlib.Path(workdir) / METRICS_FILE, "a", encoding="utf-8")
      self.events = EventsWriter(str(folder / "events"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    now = time.time()
    for name, value in scalars.items():
      self.events.write_event(event_pb2.Event(
          wall_time=now, step=step, summary=tb_summary.scalar(f"train/{name}", value)))
    self.events.flush()
    self.lines.write(json.dumps({"step": step, **scalars}) + "\n")
    self.lines.flush()
    log.info("step %d: %s", step, " ".join(f"{k}={_format(v)}" for k, v in scalars.items()))

  def close(self) -> None:
    """Closes both files; the first error (e.g. a full disk) is raised after both."""
    if not self.enabled:
      return
    errors = []
    for close in (self.events.close, self.lines.close):
      try:
        close()
      except OSError as e:
        errors.append(e)
    if errors:
      raise errors[0]


def _format(value: float) -> str:
  return f"{value:.4g}"
