"""The training loop in this process (8 forced CPU devices, the cheap loss): non-finite
steps stop the run and keep the last good checkpoint; resuming and loading pre-trained
groups refuse configs that do not fit, naming the fields; the command line's bad input
is one line."""

import errno
import subprocess

import chex
import jax
import jax.numpy as jnp
import pytest

import test_train_support as support
from lumiere_jax import cli
from lumiere_jax.commands import train as train_command
from lumiere_jax.errors import UserError
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.train import checkpoint
from lumiere_jax.train import loop
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
  with pytest.raises(UserError, match="is not writable"):
    loop.train(_config("t2i", data_dir), blocker / "run", loss_fn=support.cheap_loss)


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
