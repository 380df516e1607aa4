"""The training loop in this process (8 forced CPU devices, the cheap loss): non-finite
steps stop the run and keep the last good checkpoint; resuming and loading pre-trained
groups refuse configs that do not fit, naming the fields; the command line's bad input
is one line."""

import asyncio
import contextlib
import errno
import logging
import re
import subprocess
import sys
import time
import warnings

import chex
import jax
import jax.numpy as jnp
import pytest
import tensorstore as ts

import test_train_support as support
from lumiere_jax import cli
from lumiere_jax import weights
from lumiere_jax.commands import train as train_command
from lumiere_jax.errors import ConfigError, UserError
from lumiere_jax.models import build
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.train import checkpoint
from lumiere_jax.train import loop
from lumiere_jax.train import metrics as metrics_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train.optimizer import make_optimizer

BATCH = 8  # one example per forced device
SAVED_STEP = 4


def _config(stage, data_dir, *overrides):
  return support.micro_config(stage, f"data.batch_size={BATCH}", f"train.data_dir={data_dir}",
                              *overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return support.build_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def t2i_checkpoint(data_dir, tmp_path_factory):
  """(workdir, host state) of a t2i run checkpointed at SAVED_STEP (a random state)."""
  workdir = tmp_path_factory.mktemp("t2i")
  state = support.save_random_checkpoint(_config("t2i", data_dir), workdir, SAVED_STEP,
                                         data_dir)
  return workdir, state


def _nan_loss(params, batch, rng):
  loss, metrics = support.cheap_loss(params, batch, rng)
  return loss * jnp.nan, metrics


def _restore_latest(workdir, config):
  manager = checkpoint.make_manager(workdir / checkpoint.CHECKPOINTS)
  step = manager.latest_step()
  layout = state_lib.Layout(config, make_mesh(config.mesh), make_optimizer(config.train))
  restored = checkpoint.restore(manager, step, config, layout.state_target())
  manager.close()
  return step, jax.device_get(restored)


def test_k_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(
    t2i_checkpoint, data_dir, tmp_path):
  good_dir, good_state = t2i_checkpoint
  workdir = tmp_path / "run"
  support.copy_checkpoints(good_dir, workdir)
  config = _config("t2i", data_dir, "train.num_steps=20", "train.max_nonfinite_steps=3",
                   "train.checkpoint_every=1")
  with pytest.raises(loop.TrainingStopped, match=r"3 non-finite steps in a row \(steps 5-7.*"
                                               r"the newest checkpoint is step 4 in"):
    loop.train(config, workdir, loss_fn=_nan_loss)
  step, restored = _restore_latest(workdir, config)
  assert step == SAVED_STEP  # nothing was written while the steps were being skipped
  chex.assert_trees_all_equal(restored, good_state)


def test_resume_refuses_overrides_that_change_parameter_shapes(t2i_checkpoint, data_dir,
                                                               tmp_path):
  support.copy_checkpoints(t2i_checkpoint[0], tmp_path)
  config = _config("t2i", data_dir, "model.block_out_channels=(16,)")
  with pytest.raises(UserError, match=r"model\.block_out_channels=\[8\] in the checkpoint, "
                                      r"\[16\] here"):
    loop.train(config, tmp_path, loss_fn=support.cheap_loss)


def test_t2v_needs_a_matching_t2i_checkpoint(t2i_checkpoint, data_dir, tmp_path):
  with pytest.raises(UserError, match="needs train.init_checkpoint"):
    loop.train(_config("t2v", data_dir), tmp_path / "a", loss_fn=support.cheap_loss)
  with pytest.raises(UserError, match="does not exist"):
    loop.train(_config("t2v", data_dir, f"train.init_checkpoint={tmp_path}/nowhere"),
               tmp_path / "b", loss_fn=support.cheap_loss)
  other = _config("t2v", data_dir, f"train.init_checkpoint={t2i_checkpoint[0]}",
                  "model.block_out_channels=(16,)", "model.cross_attention_dim=32",
                  "text.width=32")
  with pytest.raises(UserError, match=r"another architecture.*model\.block_out_channels="
                                      r"\[8\] in the checkpoint, \[16\] here"):
    loop.train(other, tmp_path / "c", loss_fn=support.cheap_loss)


def test_init_group_checkpoints_take_those_groups_from_their_own_runs(t2i_checkpoint,
                                                                     data_dir, tmp_path):
  """train.init_group_checkpoints=('temporal=T2V',): the backbone and text come from
  init_checkpoint (a t2i run), the temporal layers from the t2v run T2V (its EMA)."""
  t2i_dir, t2i_state = t2i_checkpoint
  t2v_dir = tmp_path / "t2v"
  t2v_state = support.save_random_checkpoint(_config("t2v", data_dir), t2v_dir, SAVED_STEP,
                                             data_dir)
  config = _config("t2v", data_dir, f"train.init_checkpoint={t2i_dir}",
                   f"train.init_group_checkpoints=('temporal={t2v_dir}',)",
                   "train.num_steps=1", "train.warmup_steps=10")  # step 1: lr 0
  result = jax.device_get(loop.train(config, tmp_path / "run", loss_fn=support.cheap_loss
                                     ).state)
  chex.assert_trees_all_equal(result.params["temporal"], t2v_state.ema["temporal"])
  chex.assert_trees_all_equal(result.frozen["backbone"], t2i_state.ema["backbone"])
  chex.assert_trees_all_equal(result.frozen["text"], t2i_state.frozen["text"])
  assert not jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: (a == b).all(), t2v_state.ema["temporal"], t2v_state.params["temporal"]))
  for bad in ("('temporal',)", "('motion=/x',)", f"('temporal={t2v_dir}', 'temporal=/x')"):
    with pytest.raises(ConfigError, match=r"train\.init_group_checkpoints="):
      _config("t2v", data_dir, f"train.init_group_checkpoints={bad}")


def test_a_shipped_model_initialises_a_run(data_dir, tmp_path, monkeypatch):
  """train.init_checkpoint=model:NAME (and GROUP=model:NAME): the groups come from the
  shipped model's weights, as `weights.load_shipped` reads them; a name that is not
  shipped is refused in one line before anything is built."""
  config = _config("t2v", data_dir)
  params = build.init_params(config, jax.random.key(3))
  other = build.init_params(config, jax.random.key(4))
  monkeypatch.setattr(weights, "ASSETS", tmp_path / "models")
  weights.export_model(config, params, "micro", "a random micro t2v", weights.ASSETS)
  weights.export_model(config, other, "micro_other", "another", weights.ASSETS)
  run = _config("t2v", data_dir, "train.init_checkpoint=model:micro",
                "train.init_group_checkpoints=('temporal=model:micro_other',)",
                "train.num_steps=1", "train.warmup_steps=10")  # step 1: lr 0
  result = jax.device_get(loop.train(run, tmp_path / "run", loss_fn=support.cheap_loss).state)
  chex.assert_trees_all_equal(result.params["temporal"], jax.device_get(other["temporal"]))
  chex.assert_trees_all_equal(result.frozen["backbone"], jax.device_get(params["backbone"]))
  chex.assert_trees_all_equal(result.frozen["text"], jax.device_get(params["text"]))
  # A group the shipped model lacks (the caption adapter) starts from its init, which
  # passes the caption through: its residual branches end in zero projections.
  adapted = _config("t2v", data_dir, "train.init_checkpoint=model:micro",
                    "model.temporal.text_adapter_layers=1",
                    "train.trainable=('temporal', 'adapter')",
                    "train.num_steps=1", "train.warmup_steps=10")
  result = jax.device_get(loop.train(adapted, tmp_path / "adapted",
                                     loss_fn=support.cheap_loss).state)
  chex.assert_trees_all_equal(result.params["temporal"], jax.device_get(params["temporal"]))
  chex.assert_trees_all_equal(result.frozen["backbone"], jax.device_get(params["backbone"]))
  adapter = result.params["adapter"]
  assert not adapter["layers_0_attn"]["to_out_0"]["kernel"].any()
  assert not adapter["layers_0_fc2"]["kernel"].any()
  assert adapter["layers_0_fc1"]["kernel"].any()
  missing = _config("t2v", data_dir, "train.init_checkpoint=model:nowhere")
  with pytest.raises(UserError, match="no shipped model named 'nowhere'"):
    loop.train(missing, tmp_path / "b", loss_fn=support.cheap_loss)
  assert not (tmp_path / "b").exists()


def test_the_loop_runs_at_most_one_step_ahead_of_the_devices(data_dir, tmp_path,
                                                             monkeypatch):
  """Asynchronous dispatch is bounded: when step n is dispatched, every step before n - 1
  has finished, so a preemption or Ctrl-C saves within about a step of the signal rather
  than after a queue of dispatched steps. The steps here are slow (a host callback
  sleeps) and the loop's own work fast, so an unbounded loop would run far ahead."""
  def slow_loss(params, batch, rng):
    jax.debug.callback(lambda: time.sleep(0.3))
    return support.cheap_loss(params, batch, rng)

  outputs, ahead = [], []
  real_compile = loop._compile

  def compile_and_watch(*args):
    compiled = real_compile(*args)

    def step(*step_args):
      result = compiled(*step_args)
      ahead.append(sum(not leaf.is_ready() for leaf in outputs[:-1]))
      outputs.append(jax.tree_util.tree_leaves(result[1])[0])
      return result

    return step

  monkeypatch.setattr(loop, "_compile", compile_and_watch)
  config = _config("t2i", data_dir, "train.num_steps=10", "train.log_every=1000",
                   "train.checkpoint_every=1000")
  loop.train(config, tmp_path / "run", loss_fn=slow_loss)
  assert len(ahead) == 10 and max(ahead) == 0, ahead


def test_a_group_frozen_at_init_stays_at_its_seeded_init(data_dir, tmp_path):
  """train.frozen_at_init=('text',): the t2i stage trains the backbone around a fixed
  random text encoder, with no checkpoint to load it from; without it that is refused."""
  frozen_text = ("train.trainable=('backbone',)", "train.num_steps=2")
  with pytest.raises(UserError, match=r"freezes \['text'\], so it needs"):
    loop.train(_config("t2i", data_dir, *frozen_text, "train.frozen_at_init=()"),
               tmp_path / "a", loss_fn=support.cheap_loss)
  config = _config("t2i", data_dir, *frozen_text, "train.frozen_at_init=('text',)")
  result = loop.train(config, tmp_path / "b", loss_fn=support.cheap_loss)
  layout = state_lib.Layout(config, make_mesh(config.mesh), make_optimizer(config.train))
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  fresh = jax.device_get(state_lib.init_params(layout, init_rng))
  final = jax.device_get(result.state)
  assert result.step == 2 and set(final.params) == {"backbone"}
  chex.assert_trees_all_equal(final.frozen["text"], fresh["text"])
  assert not jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: (a == b).all(), final.params["backbone"], fresh["backbone"]))


def test_unwritable_workdir_is_one_clear_error(data_dir, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(UserError, match="file is a file, not a folder"):
    loop.train(_config("t2i", data_dir), blocker / "run", loss_fn=support.cheap_loss)
  assert [p.name for p in tmp_path.iterdir()] == ["file"]


DISK_FULL = re.compile(r"lumiere train: error: could not write (?:a checkpoint|the metrics) "
                       r"to \S+: No space left on device; step (\d+) is the newest intact "
                       r"checkpoint")
PROGRESS = re.compile(r"\d\d:\d\d:\d\d (step \d+: |train step compiled |resuming )")


@contextlib.contextmanager
def small_disk(path, size: str):
  """A tmpfs of `size` mounted at `path` (needs the privilege to mount: root, or a
  user namespace; skipped cleanly where there is none)."""
  path.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(path)], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError) as e:
    pytest.skip(f"cannot mount a tmpfs here: {e}")
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], check=False, timeout=30)


def test_a_full_disk_during_real_saves_is_one_line_and_the_newest_intact_step_restores(
    data_dir, tmp_path):
  """Real orbax saves (checkpoint_every=1) of `lumiere train` onto a 6 MB tmpfs: the
  disk fills after a few steps. The run ends with exit code 2 and one line naming the
  newest intact checkpoint, with nothing else but progress lines (no tracebacks from
  orbax, asyncio or tensorboard threads), and that checkpoint restores."""
  with small_disk(tmp_path / "disk", "6000k") as disk:
    workdir = disk / "run"
    result = subprocess.run(support.lumiere_command(
        "train", "--config", "shapes_tiny:t2i", "--workdir", str(workdir),
        *support.cli_overrides(f"train.data_dir={data_dir}", "train.num_steps=60",
                               "train.checkpoint_every=1", "train.keep_checkpoints=60")),
        env=support.subprocess_env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=600)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    error = DISK_FULL.fullmatch(lines[-1])
    assert error, lines[-1]
    assert [line for line in lines[:-1] if not PROGRESS.match(line)] == []
    newest = int(error.group(1))
    assert newest >= 1 and checkpoint.committed_steps(workdir / "checkpoints")[-1] == newest
    step, state = _restore_latest(workdir, support.micro_config("t2i",
                                                                f"train.data_dir={data_dir}"))
    assert step == newest and int(state.step) == newest


@pytest.mark.parametrize("num_steps", [1, 2])
def test_a_disk_too_small_for_the_first_save_is_one_line_and_leaves_nothing(
    num_steps, data_dir, tmp_path):
  """The tiny model's first save already fails, found at the end of the run (1 step: the
  last save, when the run closes) or inside the loop (2 steps: the second save waits for
  the first). One line saying no checkpoint exists, nothing printed after it (orbax's
  event loop still reports its unfinished writes through asyncio's logger, so the log file
  is detached first), and the workdir the run created is gone."""
  with small_disk(tmp_path / "disk", "2000k") as disk:
    workdir = disk / "run"
    result = subprocess.run(support.lumiere_command(
        "train", "--config", "shapes_tiny:t2i", "--workdir", str(workdir),
        f"--config.train.data_dir={data_dir}", f"--config.train.num_steps={num_steps}",
        "--config.train.checkpoint_every=1", "--config.train.progress_bar=false"),
        env=support.subprocess_env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=600)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    # Which write meets the full disk first, the checkpoint's or the metrics' (the failed
    # save's partial files may take the last blocks before the step's log line is
    # flushed), is a race; either way the one line names the disk and that nothing is saved.
    assert lines[-1] in (
        f"lumiere train: error: could not write a checkpoint to {workdir}/checkpoints: "
        "No space left on device; no earlier checkpoint exists",
        f"lumiere train: error: could not write the metrics to {workdir}: "
        "No space left on device; no earlier checkpoint exists"), lines[-1]
    assert [line for line in lines[:-1] if not PROGRESS.match(line)] == [], result.stderr[-3000:]
    assert not workdir.exists()


def test_full_disk_during_a_save_is_one_line_naming_the_intact_checkpoint(t2i_checkpoint):
  manager = checkpoint.make_manager(t2i_checkpoint[0] / checkpoint.CHECKPOINTS)

  # The two forms seen: an OSError (Python-side files), and tensorstore's error as orbax
  # raises it when the arrays do not fit (measured on a full tmpfs, docs/training.md).
  errors = [OSError(errno.ENOSPC, "No space left on device"),
            ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed "
                       "to write 113348 bytes to file 27: No space left on device "
                       "[os_error_code='28']")]
  for cause in errors:
    with pytest.raises(UserError, match=f"No space left on device; step {SAVED_STEP} is the "
                                        "newest intact checkpoint"):
      with checkpoint.disk_errors(manager):
        raise RuntimeError("save failed") from cause


def test_closed_event_loop_reports_of_tensorstore_go_to_the_log_not_the_terminal(
    monkeypatch, caplog):
  """The mechanism behind finding 4's flood, made on purpose: a tensorstore future that
  completes after its asyncio loop closed reports "RuntimeError: Event loop is closed" as
  unraisable (printed as a bare traceback by default). metrics.configure_logging's hook
  sends exactly those to the log; any other unraisable report still reaches the hook
  before it."""
  passed_on = []
  monkeypatch.setattr("sys.unraisablehook",
                      metrics_lib.closed_loop_reports_to_log(passed_on.append))
  caplog.set_level(logging.INFO, logger="tensorstore")
  promise, future = ts.Promise.new()
  event_loop = asyncio.new_event_loop()

  async def waiter():
    await future

  task = event_loop.create_task(waiter())
  event_loop.run_until_complete(asyncio.sleep(0.01))
  event_loop.close()
  promise.set_result(1)  # tensorstore's callback meets the closed loop
  deadline = time.monotonic() + 10
  while not caplog.records and time.monotonic() < deadline:
    time.sleep(0.01)
  del task  # pending forever: its loop is closed
  assert [r.exc_info[1].args for r in caplog.records] == [("Event loop is closed",)]
  assert passed_on == []

  class Unrelated:
    def __del__(self):
      raise ValueError("not ours")

  Unrelated()
  assert [type(r.exc_value) for r in passed_on] == [ValueError]


def test_python_warnings_of_a_training_run_go_to_its_log_not_the_terminal(tmp_path, capsys):
  """What ended two full-disk runs with a line after the error (orbax's coroutines never
  awaited once its event loop is torn down, reported by `warnings` at exit): with a
  workdir, a Python warning is written to logs/process_0.log and not to stderr."""
  root = logging.getLogger()
  saved = (list(root.handlers), root.level, logging.raiseExceptions, sys.unraisablehook)
  try:
    metrics_lib.configure_logging(0, tmp_path)
    with warnings.catch_warnings():
      warnings.simplefilter("always")
      warnings.warn("coroutine 'write' was never awaited", RuntimeWarning)
    for handler in root.handlers:
      handler.flush()
  finally:
    metrics_lib.stop_logging_to(tmp_path)
    logging.captureWarnings(False)
    root.handlers, root.level = saved[0], saved[1]
    logging.raiseExceptions, sys.unraisablehook = saved[2], saved[3]
  assert "never awaited" not in capsys.readouterr().err
  assert "coroutine 'write' was never awaited" in (tmp_path / "logs" / "process_0.log").read_text()


@pytest.mark.parametrize("flags,message", [
    (["--config", "configs/missing.py:t2i", "--workdir", "w"],
     "config file not found: configs/missing.py"),
    (["--config", "configs/shapes_tiny.py:t2i", "--workdir", "w",
      "--config.train.learnin_rate=1"],
     "unknown config key 'train.learnin_rate'; did you mean 'train.learning_rate'?"),
    (["--config", "configs/shapes_tiny.py:t2i", "--workdir", "w", "--config.train.num_steps=x"],
     "config key 'train.num_steps' expects int, got 'x'"),
    (["--config", "shapes_tiny:t2i", "--workdir", "w", "--config.train.num_steps"],
     "--config.train.num_steps: write a config override as --config.a.b=VALUE"),
    (["--config", "shapes_tny:t2i", "--workdir", "w"],
     "unknown config 'shapes_tny'; the shipped configs are lumiere_base, shapes_tiny"),
    (["--config", "configs/shapes_tiny.py:t2i", "--workdir", "w", "--config.train.ema_decay=1.5"],
     "train.ema_decay=1.5 is invalid"),
    (["--config", "configs/shapes_tiny.py:t2x", "--workdir", "w"], "unknown variant 't2x'"),
    (["--config", "configs/shapes_tiny.py:t2i"], "--workdir is required"),
    (["--config", "configs/shapes_tiny.py:t2i", "--workdir", "w", "--config.data.batch_size=2",
      "--config.data.batch_size=4"], "given more than once"),
])
def test_bad_flags_are_one_line(flags, message, monkeypatch):
  monkeypatch.chdir(support.REPO)
  with pytest.raises(UserError) as error:
    train_command.parse_flags(flags)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_overrides_reach_the_locked_config(monkeypatch):
  monkeypatch.chdir(support.REPO)
  values = train_command.parse_flags(["--config", "configs/shapes_tiny.py:t2v", "--workdir",
                                      "w", "--config.train.learning_rate=0.003",
                                      "--config.model.temporal.down_levels=(True,False)",
                                      "--config.train.progress_bar=false"])
  assert values.config.train.learning_rate == 0.003
  assert values.config.model.temporal.down_levels == (True, False)
  assert values.config.train.progress_bar is False
  assert values.config.is_locked


def test_a_config_name_works_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  values = train_command.parse_flags(["--config", "shapes_tiny:t2i", "--workdir", "w",
                                      "--config.train.data_dir=123", "--stop_at_step=3"])
  assert values.config.stage == "t2i" and values.config.train.data_dir == "123"
  assert values.stop_at_step == 3 and values.workdir == "w"


def test_help_and_console_script_errors(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--help"])
  assert exit_info.value.code == 0 and "--config.a.b=VALUE" in capsys.readouterr().out
  result = subprocess.run(support.lumiere_command(
      "train", "--config", "configs/shapes_tiny.py:t2i", "--workdir", "w",
      "--config.model.widht=3"), cwd=support.REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert result.stderr.strip() == ("lumiere train: error: unknown config key 'model.widht'")


def test_a_disk_that_fills_between_saves_is_one_line_with_nothing_printed_at_exit(
    data_dir, tmp_path):
  """Finding 4: the disk fills after the first checkpoint (another program takes the
  rest); the next write of the run (its metrics) fails. One line, exit code 2, and
  nothing after it: no tracebacks of tensorboard's writer thread or exit hook, no orbax
  thread left running."""
  with small_disk(tmp_path / "disk", "8m") as disk:
    workdir = disk / "run"
    process = subprocess.Popen(support.lumiere_command(
        "train", "--config", "shapes_tiny:t2i", "--workdir", str(workdir),
        *support.cli_overrides(f"train.data_dir={data_dir}", "train.num_steps=100000",
                               "train.checkpoint_every=1000")),
        env=support.subprocess_env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
      deadline = time.monotonic() + 300
      while not checkpoint.committed_steps(workdir / "checkpoints"):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
      # Unbuffered: a buffered file would raise the full disk again when it is closed.
      with open(disk / "filler", "wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
          while True:
            filler.write(bytes(1 << 16))
      _, stderr = process.communicate(timeout=300)
    finally:
      if process.poll() is None:
        process.kill()
        process.wait()
    lines = stderr.strip().splitlines()
    assert process.returncode == 2, stderr[-3000:]
    error = DISK_FULL.fullmatch(lines[-1])
    assert error and error.group(1) == "1", lines[-1]
    assert [line for line in lines[:-1] if not PROGRESS.match(line)] == [], stderr[-3000:]
