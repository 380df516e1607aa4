"""launch/shapes_recipe.sh, every stage run with a stub `lumiere` that records its
arguments: each training command's overrides must load as a config (lumiere refuses a field
given twice, so a stage's overrides must replace the defaults its function gives), and a
stage's overrides win over those defaults."""

import os
import pathlib
import re
import subprocess

import pytest

from lumiere_jax.config import load_config
from lumiere_jax.config.flags import parse_overrides

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPE = ROOT / "launch" / "shapes_recipe.sh"

# Records one call per line, arguments tab-separated; `data build` makes its --out folder
# (the recipe builds a dataset only where that folder is missing).
STUB = r"""#!/usr/bin/env bash
printf '%s\t' "$@" >> "$LUMIERE_STUB_LOG"; printf '\n' >> "$LUMIERE_STUB_LOG"
if [ "$1 $2" = "data build" ]; then
  while [ $# -gt 0 ]; do [ "$1" = "--out" ] && mkdir -p "$2"; shift; done
fi
"""


def recipe_stages():
  """Every stage the recipe's case statement names, in its order."""
  return re.findall(r"^    ([a-z0-9_]+)\)$", RECIPE.read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
  """{stage: [argv of each lumiere call]} of the whole recipe, run once per stage."""
  tmp = tmp_path_factory.mktemp("recipe")
  (tmp / "bin").mkdir()
  stub = tmp / "bin" / "lumiere"
  stub.write_text(STUB)
  stub.chmod(0o755)
  env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}"}
  out = {}
  for stage in recipe_stages():
    log = tmp / f"{stage}.log"
    env["LUMIERE_STUB_LOG"] = str(log)
    run = subprocess.run(["bash", str(RECIPE), str(tmp / "runs"), stage], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, (stage, run.stderr)
    lines = log.read_text().splitlines() if log.exists() else []
    out[stage] = [line.rstrip("\t").split("\t") for line in lines]
  return out


def train_config(argv):
  """The config a recorded `lumiere train` call would train with."""
  spec = argv[argv.index("--config") + 1]
  return load_config(spec, parse_overrides([a for a in argv if a.startswith("--config.")]))


def test_every_stage_is_listed_and_runs(calls):
  usage = re.search(r"unknown stage \$stage \(([^)]*)\)", RECIPE.read_text()).group(1)
  assert usage.split() == recipe_stages()
  assert len(calls) > 30 and all(calls[s] for s in calls if s != "data")


def test_every_training_command_loads_its_config(calls):
  trained = 0
  for stage, argvs in calls.items():
    for argv in argvs:
      if argv[0] == "train":
        train_config(argv)  # raises on a field given twice or a bad field
        trained += 1
  assert trained >= 25


def test_a_stages_overrides_replace_its_functions_defaults(calls):
  """t2v_batch8 (stage 8, shipped): fine_tune's EMA 0.998 and trainable groups are replaced
  by grounded_batch8's, whose batch of 8 replaces fine_tune's 4."""
  train, = [argv for argv in calls["t2v_batch8"] if argv[0] == "train"]
  config = train_config(train)
  assert config.train.ema_decay == 0.995
  assert tuple(config.train.trainable) == ("temporal", "film_pool")
  assert config.data.batch_size == 8
  frame_noise, = [argv for argv in calls["t2v_frame_noise"] if argv[0] == "train"]
  assert train_config(frame_noise).diffusion.frame_noise_correlation == 0.5
