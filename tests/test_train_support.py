"""What the training tests share: a micro model config, a tiny dataset, a cheap loss and
the environment of subprocess runs. (No tests here.)

The micro model is the real STUNet / UNet2D code at the smallest sizes the config allows
(one spatial level, width 8, a one-layer text encoder): the same program structure as
shapes_tiny, a fraction of its compile time.
"""

import os
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.config import load_config
from lumiere_jax.data import builders, pipeline
from lumiere_jax.data.pipeline import to_model_range
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.train import checkpoint
from lumiere_jax.train import state as state_lib
from lumiere_jax.train.optimizer import make_optimizer

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA_FRAMES = 4

MICRO = ("model.block_out_channels=(8,)", "model.cross_attention_levels=(False,)",
         "model.num_attention_heads=2", "model.norm_num_groups=4",
         "model.cross_attention_dim=16", "model.temporal.down_levels=()",
         "model.temporal.num_heads=2", "text.width=16", "text.num_layers=1",
         "text.num_heads=2", "text.vocab_size=64", "text.max_length=8",
         f"data.num_frames={DATA_FRAMES}", "data.batch_size=2",
         "train.progress_bar=False", "train.log_every=1")

def micro_config(stage: str, *overrides: str):
  return load_config(f"shapes_tiny:{stage}", [*MICRO, *overrides])


def cli_overrides(*overrides: str) -> list:
  return [f"--config.{o}" for o in (*MICRO, *overrides)]


def build_dataset(root: pathlib.Path) -> str:
  """32 shapes clips of 4 frames at 32x32 (the smallest the builder makes)."""
  return str(builders.build_shapes(root, num_videos=32, resolution=32,
                                   num_frames=DATA_FRAMES))


def cheap_loss(params, batch, rng):
  """A loss that touches every trainable weight, the batch and the step key, but runs no
  model: for tests of the loop and checkpointing, where the model's compile time would
  only slow them down. Any change of data position or key changes its gradients."""
  pixels = to_model_range(batch["image"] if "image" in batch else batch["video"])
  noise = jax.random.normal(rng, ())
  total = sum(jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params))
  return 1e-3 * total * (1.0 + 0.1 * noise) + jnp.mean(pixels), {}


def subprocess_env(devices: int = 1) -> dict:
  """The environment of a training subprocess: CPU, `devices` host devices (not the 8 of
  the pytest process), the session's compilation cache (conftest.py; a restarted process
  reloads its programs instead of recompiling them), and XLA's cheapest backend
  optimisation (it halves compile time; every process of a test uses the same flags, so
  their programs are still identical)."""
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu",
             XLA_FLAGS=(f"--xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0"),
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
  return env


def lumiere_command(*args: str) -> list:
  return [sys.executable, "-m", "lumiere_jax.cli", *args]


def copy_checkpoints(source_workdir, workdir) -> None:
  """Starts `workdir` from another run's checkpoints (a resumable copy)."""
  shutil.copytree(pathlib.Path(source_workdir) / "checkpoints",
                  pathlib.Path(workdir) / "checkpoints")


def random_state(layout, step: int, seed: int = 0):
  """A host TrainState of `layout`'s shapes with every leaf random (counters set to
  `step` and no skipped steps): a stand-in for a trained state that needs no model
  compile, and in which a leaf restored into the wrong place could not go unnoticed."""
  rng = np.random.default_rng(seed)

  def fill(leaf):
    if jnp.issubdtype(leaf.dtype, jnp.integer):
      return np.asarray(rng.integers(0, 100, leaf.shape), leaf.dtype)
    return np.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)  # Adam's nu >= 0

  state = jax.tree_util.tree_map(fill, layout.abstract_state)
  return state.replace(step=np.int32(step), nonfinite_run=np.int32(0),
                       nonfinite_total=np.int32(0))


def save_random_checkpoint(config, workdir, step: int, data_dir):
  """WORKDIR/checkpoints/STEP holding random_state (data position STEP batches), as a
  run of `config` would have saved it; returns the host state."""
  layout = state_lib.Layout(config, make_mesh(config.mesh), make_optimizer(config.train))
  state = random_state(layout, step)
  iterator = pipeline.make_train_iterator(config, data_dir)
  for _ in range(step):
    next(iterator)
  manager = checkpoint.make_manager(pathlib.Path(workdir) / checkpoint.CHECKPOINTS,
                                    config.train)
  checkpoint.save(manager, step, jax.device_put(state, layout.state_shardings), config,
                  iterator, force=True)
  checkpoint.wait(manager)
  manager.close()
  return state
