"""The wheel works anywhere: built from the sources, installed (not editable) into a fresh
venv, and run from a directory outside the repository, a shipped config loads by name
for `lumiere generate` and `lumiere train`, and an unknown name lists the known ones.

Offline: the wheel is built without build isolation (setuptools and wheel from this
environment, the `test` extra) and the venv sees this environment's packages
(--system-site-packages), so only lumiere_jax itself is installed, from the wheel.
"""

import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import setuptools

REPO = pathlib.Path(__file__).resolve().parent.parent
# What the build reads: metadata, the long description, the package, the shipped configs.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "lumiere_jax", "configs")
# The smallest shapes_tiny:t2i the config allows at its data shape: compiling is most of
# the train run's time.
SMALL_T2I = ["--config.model.block_out_channels=(16, 32)",
             "--config.model.cross_attention_levels=(False, True)",
             "--config.text.num_layers=1", "--config.data.batch_size=4",
             "--config.train.num_steps=1", "--config.train.log_every=1",
             "--config.train.progress_bar=False"]


def test_setup_cfg_lists_every_package():
  """setup.cfg lists the packages (configs/ is mapped in, which find: cannot do): a new
  subpackage missing from the list would be missing from the wheel."""
  setup = configparser.ConfigParser()
  setup.read(REPO / "setup.cfg")
  declared = sorted(setup["options"]["packages"].split())
  found = setuptools.find_packages(str(REPO), include=["lumiere_jax*"])
  assert declared == sorted([*found, "lumiere_jax.configs"])
  assert setup["options"]["package_dir"].split() == ["lumiere_jax.configs", "=", "configs"]


def _run(command, cwd, env, timeout=300):
  result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
  return result


def _build_wheel(root: pathlib.Path) -> pathlib.Path:
  """The wheel of a copy of the sources (the build writes build/ and *.egg-info where it
  runs, which must not be the repository)."""
  source = root / "source"
  source.mkdir()
  for name in SOURCES:
    if (REPO / name).is_dir():
      shutil.copytree(REPO / name, source / name,
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy2(REPO / name, source / name)
  _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "--no-index", "-w", str(root / "dist"), str(source)], root, dict(os.environ))
  return next((root / "dist").glob("lumiere_jax-*.whl"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
  """(bin folder, environment, a working directory outside the repository) of a venv
  holding the wheel."""
  root = tmp_path_factory.mktemp("packaging")
  wheel = _build_wheel(root)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu",
             XLA_FLAGS=("--xla_force_host_platform_device_count=1 "
                        "--xla_backend_optimization_level=0"))
  _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
        str(root / "venv")], root, env)
  bin_dir = root / "venv" / "bin"
  # --ignore-installed: this environment's editable lumiere_jax is visible to the venv;
  # the wheel's copy goes into the venv's own site-packages, which comes first.
  _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
        "--ignore-installed", str(wheel)], root, env)
  env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  return bin_dir, env, elsewhere


@pytest.mark.slow
def test_the_installed_package_is_the_wheels(venv):
  bin_dir, env, cwd = venv
  result = _run([str(bin_dir / "python"), "-c",
                 "import lumiere_jax.config as c, lumiere_jax; "
                 "print(lumiere_jax.__file__); print(c.shipped_dir())"], cwd, env)
  package_file, configs = result.stdout.split()
  venv_root = bin_dir.parent
  assert pathlib.Path(package_file).is_relative_to(venv_root), package_file
  assert pathlib.Path(configs).is_relative_to(venv_root), configs
  assert not pathlib.Path(package_file).is_relative_to(REPO)


@pytest.mark.slow
def test_generate_by_config_name_outside_the_repository(venv):
  bin_dir, env, cwd = venv
  _run([str(bin_dir / "lumiere"), "generate", "--config", "shapes_tiny:t2v", "--prompt",
        "a red circle moving left", "--steps", "2", "--out", "x.npy"], cwd, env)
  video = np.load(cwd / "x.npy")
  assert video.dtype == np.uint8 and video.shape == (16, 32, 32, 3)


@pytest.mark.slow
def test_train_by_config_name_outside_the_repository(venv):
  bin_dir, env, cwd = venv
  lumiere = str(bin_dir / "lumiere")
  _run([lumiere, "data", "build", "shapes", "--out", "D", "--num-videos", "8",
        "--resolution", "32", "--frames", "16"], cwd, env)
  _run([lumiere, "train", "--config", "shapes_tiny:t2i", "--workdir", "W",
        "--config.train.data_dir=D", *SMALL_T2I], cwd, env, timeout=600)
  assert (cwd / "W" / "checkpoints" / "1").is_dir(), sorted((cwd / "W").rglob("*"))[:20]


@pytest.mark.slow
def test_an_unknown_config_name_lists_the_shipped_ones(venv):
  bin_dir, env, cwd = venv
  result = subprocess.run([str(bin_dir / "lumiere"), "train", "--config", "shapes_tny:t2i",
                           "--workdir", "W2"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
  assert ("unknown config 'shapes_tny'; the shipped configs are lumiere_base, shapes_tiny"
          in result.stderr)
  assert not (cwd / "W2").exists()
