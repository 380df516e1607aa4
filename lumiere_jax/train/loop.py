"""The training loop shared by every stage: set up (mesh, data, state from the newest
checkpoint or from scratch), then steps, metrics, checkpoints and preemption.

A run on a workdir that holds checkpoints continues from the newest one, bit-for-bit as
if it had not stopped: the state, the data position and the per-step keys
(fold_in(rng, step)) are all restored or recomputed exactly. A SIGTERM (preemption)
makes every process save the same step and return: through orbax's preemption support
when there are several, by runtime.stop_on_sigterm when there is one.

Failures: `check_run` finds every problem known before the run (config, dataset, init
checkpoint, the workdir's layout and checkpoints) before anything is created or
compiled. Whatever ends a run, orbax's background threads and the metrics files are
closed; a run that fails or is interrupted before its first checkpoint removes the
workdir it created. Ctrl-C (runtime.handle_interrupts) is honoured after the step in
flight: that step is saved (a healthy state only) and the run raises
errors.Interrupted; during compilation the process ends within a second without saving,
which loses nothing (no step has run since the newest checkpoint). A one-process run
takes SIGTERM the same way (runtime.stop_on_sigterm) but returns as preempted.
"""

import contextlib
import dataclasses
import itertools
import logging
import os
import pathlib
import shutil
import signal
import time
from typing import Optional

import jax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.data import pipeline
from lumiere_jax.errors import Interrupted, UserError
from lumiere_jax.io import atomic
from lumiere_jax.models import build
from lumiere_jax.models import widen
from lumiere_jax.parallel import mesh as mesh_lib
from lumiere_jax.train import checkpoint
from lumiere_jax.train import metrics as metrics_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.config import validate_train_config
from lumiere_jax.train.loss import make_loss_fn
from lumiere_jax.train.optimizer import make_optimizer


log = logging.getLogger(__name__)
# What a run keeps in its workdir: folders, and the metrics file.
WORKDIR_FOLDERS = (checkpoint.CHECKPOINTS, "logs", "tensorboard", "profile")
# train.init_checkpoint (or a GROUP=... entry) naming a shipped model: model:NAME.
SHIPPED = "model:"
# How long a Ctrl-C or SIGTERM may wait for the steps in flight until the first log
# interval has timed them (then twice the measured step time, at least the default
# grace): a run's first steps are not held to the default grace of one second.
FIRST_STEPS_GRACE_S = 60.0


class TrainingStopped(Exception):
  """The run cannot go on (too many non-finite steps in a row); the message says why and
  which checkpoint is the last good one."""


@dataclasses.dataclass
class TrainResult:
  state: state_lib.TrainState
  step: int
  preempted: bool


@dataclasses.dataclass
class _Run:
  """What the loop needs, built once by `train`."""

  config: object
  workdir: pathlib.Path
  mesh: object
  manager: object
  iterator: object
  batch_sharding: NamedSharding
  writer: metrics_lib.MetricsWriter
  interrupt_forwarded: bool = False


def _info(message: str, *args) -> None:
  if jax.process_index() == 0:
    log.info(message, *args)


def check_run(config, workdir, num_devices: Optional[int] = None) -> None:
  """Every problem known before a run starts, as a UserError, with nothing created,
  built or compiled: the train section, the mesh on `num_devices` (when known: the
  command checks before jax.distributed starts, when no device may be counted yet), the
  dataset (and that it fits the config), the init checkpoint, the workdir's layout and
  the checkpoints in it."""
  validate_train_config(config)
  if num_devices is not None:
    mesh_lib.check_batch_fits(config, num_devices)
  if not config.train.data_dir:
    raise UserError("config.train.data_dir is empty; build a dataset with `lumiere data "
                    "build shapes --out DIR` and pass --config.train.data_dir=DIR")
  pipeline.check_train_data(config, config.train.data_dir)
  _check_init_checkpoint(config)
  check_workdir(workdir)


def _check_init_checkpoint(config) -> None:
  frozen = sorted(set(build.param_groups(config.model)) - set(config.train.trainable))
  needed = [g for g in frozen if g not in config.train.frozen_at_init]
  overridden = {entry.partition("=")[0] for entry in config.train.init_group_checkpoints}
  for path in [config.train.init_checkpoint] + [
      entry.partition("=")[2] for entry in config.train.init_group_checkpoints]:
    if path.startswith(SHIPPED):
      weights.model_config(name=path[len(SHIPPED):], directory=weights.ASSETS)
    elif path:
      checkpoint.find_checkpoint(path)
  if not config.train.init_checkpoint and set(needed) - overridden:
    raise UserError(f"stage {config.stage!r} freezes {needed}, so it needs "
                    f"train.init_checkpoint (the workdir of the earlier stage, e.g. t2i)")


def check_workdir(workdir) -> None:
  """The workdir can be made (or is a folder) and written, what it holds has the
  expected kinds, and every numbered folder in its checkpoints/ is a complete
  checkpoint. Creates nothing; an interrupted save of ours is set aside, not deleted
  (checkpoint.set_aside_interrupted_saves)."""
  path = atomic.check_output_dir(workdir, "workdir")
  for name in WORKDIR_FOLDERS:
    if (path / name).exists() and not (path / name).is_dir():
      raise UserError(f"workdir {workdir}: {name} exists and is not a folder")
  metrics_file = path / metrics_lib.METRICS_FILE
  if metrics_file.exists() and not metrics_file.is_file():
    raise UserError(f"workdir {workdir}: {metrics_lib.METRICS_FILE} is not a file")
  if (path / checkpoint.CHECKPOINTS).is_dir():
    checkpoint.set_aside_interrupted_saves(path / checkpoint.CHECKPOINTS)
  checkpoint.check_checkpoints_folder(path / checkpoint.CHECKPOINTS)


def prepare_workdir(workdir) -> pathlib.Path:
  """Creates the workdir and proves it writable now, not at the first checkpoint."""
  path = pathlib.Path(workdir).absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_test_{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
  return path


def train(config, workdir, *, loss_fn=None, stop_at_step: int = 0,
          log_file: bool = False) -> TrainResult:
  """Trains `config` in `workdir` to config.train.num_steps (or until preempted).

  `loss_fn(full_params, batch, rng) -> (loss, metrics)` replaces the stage's diffusion
  loss (train/loss.py) when given. `stop_at_step` > 0 ends this run early at that step,
  with a checkpoint, e.g. to fit a job's time limit; the schedule is unchanged, so the
  next run continues exactly as if there had been no stop. `log_file` sends this
  process's Python logging to WORKDIR/logs (metrics.configure_logging; the CLI does).
  """
  check_run(config, workdir, jax.device_count())
  created = not pathlib.Path(workdir).exists()
  workdir = prepare_workdir(workdir)
  if log_file:
    metrics_lib.configure_logging(jax.process_index(), workdir)
  discard = lambda: _discard_if_unused(workdir, created)
  closers = []  # what to close, in order, however the run ends
  # One process takes SIGTERM itself (runtime.stop_on_sigterm); several use jax's
  # preemption service, which lets them agree on the step to save.
  sigterm = runtime.stop_on_sigterm() if jax.process_count() == 1 else contextlib.nullcontext()
  with sigterm, runtime.cleanup_on_exit(discard):
    try:
      mesh = mesh_lib.make_mesh(config.mesh)
      layout = state_lib.Layout(config, mesh, make_optimizer(config.train))
      jitted = step_lib.jit_train_step(config, mesh, loss_fn or make_loss_fn(config),
                                       layout.optimizer, layout.state_shardings)
      iterator = pipeline.make_train_iterator(config, config.train.data_dir)
      manager = checkpoint.make_manager(workdir / checkpoint.CHECKPOINTS, config.train)
      closers.append(lambda: checkpoint.close(manager))
      writer = metrics_lib.MetricsWriter(workdir)
      closers.append(lambda: _close_writer(writer, manager))
      run = _Run(config, workdir, mesh, manager, iterator,
                 step_lib.batch_sharding(config, mesh), writer)
      init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
      state = _initial_state(run, layout, init_rng)
      step_rng = jax.jit(lambda k: k,
                         out_shardings=NamedSharding(mesh, PartitionSpec()))(step_rng)
      last_step = min(config.train.num_steps, stop_at_step or config.train.num_steps)
      # The saves say so themselves; anything else written is the metrics.
      with checkpoint.disk_errors(run.manager, "the metrics", workdir):
        result = _loop(run, jitted, state, step_rng, last_step)
    except BaseException as error:
      _close_quietly(closers)
      if isinstance(error, (UserError, KeyboardInterrupt)):
        discard()
      raise
    try:
      _close_all(closers)  # a failure here (the last save) is the run's error
    except UserError:
      discard()
      raise
  return result


def _close_all(closers) -> None:
  """Closes everything, then raises the first error."""
  errors = []
  for close in closers:
    try:
      close()
    except Exception as error:  # pylint: disable=broad-except
      errors.append(error)
  if errors:
    raise errors[0]


def _close_writer(writer, manager) -> None:
  with checkpoint.disk_errors(manager, "the metrics", writer.workdir):
    writer.close()


def _close_quietly(closers) -> None:
  """Closes everything after an error; a second error (the same full disk, most often)
  goes to the log file, so the first one is what the user reads."""
  for close in closers:
    try:
      close()
    except Exception:  # pylint: disable=broad-except
      logging.getLogger().info("while closing after an error", exc_info=True)


def _discard_if_unused(workdir: pathlib.Path, created: bool) -> None:
  """Removes a workdir this run created while it holds no checkpoint (a run that failed
  or was interrupted before its first save leaves nothing behind)."""
  if created and jax.process_count() == 1 and not checkpoint.committed_steps(
      workdir / checkpoint.CHECKPOINTS):
    metrics_lib.stop_logging_to(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


def _initial_state(run: _Run, layout: state_lib.Layout, rng):
  latest = run.manager.latest_step()
  if latest is not None:
    _info("resuming from the checkpoint of step %d in %s", latest, run.manager.directory)
    return checkpoint.restore(run.manager, latest, run.config, layout.state_target(),
                              run.iterator)
  return state_lib.init_state(layout, rng, _pretrained_groups(layout))


def _pretrained_groups(layout: state_lib.Layout):
  """Groups loaded from config.train.init_checkpoint (and those of
  train.init_group_checkpoints from theirs); every frozen group must be there, unless
  train.frozen_at_init names it (training around random frozen weights is otherwise never
  what anyone wants)."""
  config = layout.config
  frozen = sorted(set(layout.abstract_params) - set(config.train.trainable))
  needed = [g for g in frozen if g not in config.train.frozen_at_init]
  path = config.train.init_checkpoint
  target = layout.params_target()
  loaded = {}
  if path:
    loaded = _load_groups(path, config, target)
    _info("loaded %s from %s", sorted(loaded), path)
  for entry in config.train.init_group_checkpoints:
    group, _, group_path = entry.partition("=")
    part = _load_groups(group_path, config, {group: target[group]})
    if group not in part:
      raise UserError(f"train.init_group_checkpoints: {group_path} has no {group} "
                      "parameters")
    loaded[group] = part[group]
    _info("loaded %s from %s", group, group_path)
  missing = [g for g in needed if g not in loaded]
  if missing:
    source = f"train.init_checkpoint={path}" if path else "train.init_checkpoint"
    raise UserError(f"stage {config.stage!r} freezes {missing}, which {source} does not "
                    f"provide (the workdir of the earlier stage, e.g. t2i)")
  return loaded or None


def _load_groups(path: str, config, target: dict) -> dict:
  """The groups of `target` that `path` holds, placed as `target` says: a workdir's
  (checkpoint.load_params), or a shipped model's with `model:NAME` (its weights are the
  EMA of the run it was exported from)."""
  if not path.startswith(SHIPPED):
    return checkpoint.load_params(path, config, target, config.train.init_from_ema)
  _, params = weights.load_shipped(path[len(SHIPPED):], weights.ASSETS)
  loaded = {group: params[group] for group in target if group in params}
  if not loaded:
    raise UserError(f"model {path} holds none of the parameter groups {sorted(target)} "
                    "this model has")
  wanted = {group: target[group] for group in loaded}
  saved_kernel, wanted_kernel = _input_kernels(loaded, wanted)
  if saved_kernel is not None and widen.can_widen(saved_kernel.shape, wanted_kernel.shape):
    loaded = widen.with_input_kernel(loaded, widen.widen_kernel(
        saved_kernel, wanted_kernel.shape[widen.INPUT_AXIS]))
  there = jax.tree_util.tree_map(lambda a: tuple(a.shape), loaded)
  here = jax.tree_util.tree_map(lambda a: tuple(a.shape), wanted)
  if there != here:
    raise UserError(f"model {path} has another architecture than this config (compare "
                    f"its config, {weights.ASSETS}/{path[len(SHIPPED):]}.json, with this one)")
  return jax.tree_util.tree_map(lambda a, t: jax.device_put(a, t.sharding), loaded, wanted)


def _input_kernels(loaded: dict, wanted: dict):
  """(saved, wanted) first-convolution kernels, or (None, None) if a tree lacks one."""
  try:
    return widen.input_kernel(loaded), widen.input_kernel(wanted)
  except (KeyError, TypeError):
    return None, None


def _global_batches(run: _Run):
  for batch in run.iterator:
    yield pipeline.make_global_batch(batch, run.batch_sharding)


def _loop(run: _Run, jitted, state, rng, last_step: int) -> TrainResult:
  config, train_config = run.config, run.config.train
  step = int(jax.device_get(state.step))
  if step >= last_step:
    _info("the checkpoint is at step %d; nothing to do up to step %d", step, last_step)
    return TrainResult(state, step, preempted=False)
  batches = _global_batches(run)
  first = next(batches)
  compiled = _compile(run, jitted, state, first, rng)
  if runtime.terminate_requested():
    runtime.acknowledge_interrupt()
    _info("preempted before step %d: nothing new to save (the newest checkpoint is %s)",
          step + 1, _newest(run))
    return TrainResult(state, step, preempted=True)
  runtime.check_interrupt(f"interrupted before step {step + 1}; nothing new to save "
                          f"(the newest checkpoint is {_newest(run)})")
  flops = metrics_lib.model_flops_per_step(config)
  peak = metrics_lib.peak_flops_per_device(train_config.peak_flops_per_device,
                                           jax.devices()[0].device_kind)
  bar = tqdm.tqdm(total=train_config.num_steps, initial=step, unit="step",
                  disable=not (train_config.progress_bar and jax.process_index() == 0))
  interval = _Interval(step, time.perf_counter())
  profiler = _Profiler(run.workdir, train_config, step)
  in_flight = None
  runtime.set_interrupt_grace(FIRST_STEPS_GRACE_S)
  try:
    for batch in itertools.chain([first], batches):
      profiler.before(step)
      state, step_metrics = compiled(state, batch, rng)
      # At most one step runs ahead of this loop (it overlaps the next batch's loading):
      # unbounded asynchronous dispatch would queue many steps, and a preemption or
      # Ctrl-C would wait for all of them before the step it saves.
      jax.block_until_ready(in_flight)
      in_flight = step_metrics
      step += 1
      interval.metrics.append(step_metrics)
      bar.update(1)
      profiler.after(step, state)
      if step % train_config.log_every == 0 or step == last_step:
        summary = _close_interval(run, interval, step, flops, peak)
        run.writer.write(step, summary)
        bar.set_postfix(loss=f"{summary['loss']:.4f}")
      _save_if_due(run, step, state, force=step == last_step)
      if run.manager.reached_preemption(step):
        checkpoint.wait(run.manager)
        if runtime.interrupt_requested():
          raise Interrupted(f"interrupted after step {step}; the newest checkpoint is "
                            f"{_newest(run)}")
        _info("preempted: saved step %d and stopped", step)
        return TrainResult(state, step, preempted=True)
      if runtime.interrupt_requested() and _stop_on_interrupt(run, step, state):
        _info("preempted: saved step %d and stopped", step)
        return TrainResult(state, step, preempted=True)
      if step == last_step:
        break
  finally:
    bar.close()
    profiler.stop()
  return TrainResult(state, step, preempted=False)


def _stop_on_interrupt(run: _Run, step: int, state) -> bool:
  """Ctrl-C: saves the step reached and raises Interrupted; SIGTERM to one process (see
  train): saves it and returns True (preempted). Several processes must save the same
  step, so there Ctrl-C is passed on as a preemption (SIGTERM), whose service lets them
  agree on one; the loop then saves and stops at it (returns False until then)."""
  runtime.acknowledge_interrupt()
  if jax.process_count() > 1:
    if not run.interrupt_forwarded:
      run.interrupt_forwarded = True
      os.kill(os.getpid(), signal.SIGTERM)
    return False
  _save_if_due(run, step, state, force=True)
  checkpoint.wait(run.manager)
  if runtime.terminate_requested():
    return True
  raise Interrupted(f"interrupted after step {step}; the newest checkpoint is "
                    f"{_newest(run)}")


def _newest(run: _Run) -> str:
  step = run.manager.latest_step()
  return "none" if step is None else f"step {step} in {run.manager.directory}"


def _close_interval(run: _Run, interval, step: int, flops: int, peak) -> dict:
  try:
    summary = interval.close(step, run.config, flops, peak, run.mesh.devices.size)
    # A Ctrl-C may wait for the step in flight (and the one queued behind it).
    runtime.set_interrupt_grace(2.0 / summary["steps_per_s"])
    return summary
  except TrainingStopped as stop:
    checkpoint.wait(run.manager)
    raise TrainingStopped(f"{stop}; the newest checkpoint is step "
                          f"{run.manager.latest_step()} in {run.manager.directory}") from None


def _compile(run: _Run, jitted, state, batch, rng):
  start = time.perf_counter()
  lowered, compiled = step_lib.compile_train_step(run.config, run.mesh, jitted, state, batch,
                                                  rng)
  memory = compiled.memory_analysis()
  _info("train step compiled in %.1fs: %.4g FLOPs by XLA's count (global), %.1f MiB "
        "temporaries per device", time.perf_counter() - start,
        lowered.cost_analysis().get("flops", 0.0),
        getattr(memory, "temp_size_in_bytes", 0) / 2**20)
  return compiled


class _Interval:
  """Per-step metrics since the last log step (still on the devices), and the
  consecutive non-finite count carried across intervals."""

  def __init__(self, step: int, now: float):
    self.start_step, self.start_time = step, now
    self.metrics = []
    self.nonfinite_run = 0

  def close(self, step: int, config, flops: int, peak, num_devices: int) -> dict:
    """The interval's summary; raises TrainingStopped after too many skipped steps."""
    fetched = jax.device_get(self.metrics)
    now = time.perf_counter()
    self._check_finite(fetched, step, config.train.max_nonfinite_steps)
    summary = metrics_lib.summarize(fetched)
    summary.update(metrics_lib.throughput(step - self.start_step, now - self.start_time,
                                          config.data.batch_size, flops, peak, num_devices))
    self.start_step, self.start_time, self.metrics = step, now, []
    return summary

  def _check_finite(self, fetched, step: int, limit: int) -> None:
    first = step - len(fetched) + 1
    for offset, m in enumerate(fetched):
      self.nonfinite_run = 0 if bool(m["finite"]) else self.nonfinite_run + 1
      if self.nonfinite_run >= limit:
        last = first + offset
        raise TrainingStopped(
            f"stopped: {self.nonfinite_run} non-finite steps in a row (steps "
            f"{last - self.nonfinite_run + 1}-{last}, limit train.max_nonfinite_steps="
            f"{limit}); their updates were skipped and nothing was saved after the last "
            f"finite step")


def _save_if_due(run: _Run, step: int, state, force: bool) -> None:
  """Saves when orbax's policy (interval or preemption) or `force` says so, but only a
  healthy state: one reached while steps are being skipped is not written."""
  if not (force or run.manager.should_save(step)) or run.manager.latest_step() == step:
    return
  skipping = int(jax.device_get(state.nonfinite_run))
  if skipping:
    _info("not saving step %d: the last %d steps were non-finite", step, skipping)
    return
  checkpoint.save(run.manager, step, state, run.config, run.iterator, force=force)


class _Profiler:
  """A jax.profiler trace of train.profile_steps steps into WORKDIR/profile."""

  def __init__(self, workdir: pathlib.Path, train_config, first_step: int):
    self.start = train_config.profile_start_step
    self.end = self.start + train_config.profile_steps
    self.enabled = train_config.profile_steps > 0 and first_step <= self.start
    self.directory = str(workdir / "profile")
    self.active = False

  def before(self, step: int) -> None:
    if self.enabled and step == self.start:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.end:
      jax.block_until_ready(state)  # the trace ends after the last traced step's work
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      _info("profile of steps %d-%d written to %s", self.start + 1, self.end, self.directory)
