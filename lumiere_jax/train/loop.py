"""The training loop shared by every stage: set up (mesh, data, state from the newest
checkpoint or from scratch), then steps, metrics, checkpoints and preemption.

A run on a workdir that holds checkpoints continues from the newest one, bit-for-bit as
if it had not stopped: the state, the data position and the per-step keys
(fold_in(rng, step)) are all restored or recomputed exactly. A SIGTERM (preemption)
makes every process save the same step through orbax's preemption support and return.
"""

import dataclasses
import itertools
import logging
import pathlib
import time

import jax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from lumiere_jax.data import pipeline
from lumiere_jax.errors import UserError
from lumiere_jax.parallel import mesh as mesh_lib
from lumiere_jax.train import checkpoint
from lumiere_jax.train import metrics as metrics_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.config import validate_train_config
from lumiere_jax.train.loss import make_loss_fn
from lumiere_jax.train.optimizer import make_optimizer


log = logging.getLogger(__name__)


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


def _info(message: str, *args) -> None:
  if jax.process_index() == 0:
    log.info(message, *args)


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


def train(config, workdir, *, loss_fn=None, stop_at_step: int = 0) -> TrainResult:
  """Trains `config` in `workdir` to config.train.num_steps (or until preempted).

  `loss_fn(full_params, batch, rng) -> (loss, metrics)` replaces the stage's diffusion
  loss (train/loss.py) when given. `stop_at_step` > 0 ends this run early at that step,
  with a checkpoint, e.g. to fit a job's time limit; the schedule is unchanged, so the
  next run continues exactly as if there had been no stop.
  """
  validate_train_config(config)
  workdir = prepare_workdir(workdir)
  if not config.train.data_dir:
    raise UserError("config.train.data_dir is empty; build a dataset with `lumiere data "
                    "build shapes --out DIR` and pass --config.train.data_dir=DIR")
  mesh = mesh_lib.make_mesh(config.mesh)
  layout = state_lib.Layout(config, mesh, make_optimizer(config.train))
  jitted = step_lib.jit_train_step(config, mesh, loss_fn or make_loss_fn(config),
                                   layout.optimizer, layout.state_shardings)
  run = _Run(config, workdir, mesh,
             checkpoint.make_manager(workdir / checkpoint.CHECKPOINTS, config.train),
             pipeline.make_train_iterator(config, config.train.data_dir),
             step_lib.batch_sharding(config, mesh), metrics_lib.MetricsWriter(workdir))
  try:
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    state = _initial_state(run, layout, init_rng)
    step_rng = jax.jit(lambda k: k, out_shardings=NamedSharding(mesh, PartitionSpec()))(step_rng)
    last_step = min(config.train.num_steps, stop_at_step or config.train.num_steps)
    with checkpoint.disk_errors(run.manager):  # also for tensorboard and metrics files
      return _loop(run, jitted, state, step_rng, last_step)
  finally:
    with checkpoint.disk_errors(run.manager):
      checkpoint.wait(run.manager)
      run.manager.close()
      run.writer.close()


def _initial_state(run: _Run, layout: state_lib.Layout, rng):
  latest = run.manager.latest_step()
  if latest is not None:
    _info("resuming from the checkpoint of step %d in %s", latest, run.manager.directory)
    return checkpoint.restore(run.manager, latest, run.config, layout.state_target(),
                              run.iterator)
  return state_lib.init_state(layout, rng, _pretrained_groups(layout))


def _pretrained_groups(layout: state_lib.Layout):
  """Groups loaded from config.train.init_checkpoint; every frozen group must be there,
  unless train.frozen_at_init names it (training around random frozen weights is
  otherwise never what anyone wants)."""
  config = layout.config
  frozen = sorted(set(layout.abstract_params) - set(config.train.trainable))
  needed = [g for g in frozen if g not in config.train.frozen_at_init]
  path = config.train.init_checkpoint
  if not path:
    if needed:
      raise UserError(f"stage {config.stage!r} freezes {needed}, so it needs "
                      f"train.init_checkpoint (the workdir of the earlier stage, e.g. t2i)")
    return None
  loaded = checkpoint.load_params(path, config, layout.params_target(),
                                  config.train.init_from_ema)
  missing = [g for g in needed if g not in loaded]
  if missing:
    raise UserError(f"train.init_checkpoint={path} has no {missing} parameters, which "
                    f"stage {config.stage!r} freezes")
  _info("loaded %s from %s", sorted(loaded), path)
  return loaded


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
  flops = metrics_lib.model_flops_per_step(config)
  peak = metrics_lib.peak_flops_per_device(train_config.peak_flops_per_device,
                                           jax.devices()[0].device_kind)
  bar = tqdm.tqdm(total=train_config.num_steps, initial=step, unit="step",
                  disable=not (train_config.progress_bar and jax.process_index() == 0))
  interval = _Interval(step, time.perf_counter())
  profiler = _Profiler(run.workdir, train_config, step)
  try:
    for batch in itertools.chain([first], batches):
      profiler.before(step)
      state, step_metrics = compiled(state, batch, rng)
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
        _info("preempted: saved step %d and stopped", step)
        return TrainResult(state, step, preempted=True)
      if step == last_step:
        break
  finally:
    bar.close()
    profiler.stop()
  return TrainResult(state, step, preempted=False)


def _close_interval(run: _Run, interval, step: int, flops: int, peak) -> dict:
  try:
    return interval.close(step, run.config, flops, peak, run.mesh.devices.size)
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
