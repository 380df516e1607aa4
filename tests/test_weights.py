"""Named weights: export, then load by name; every corrupt or mismatching file is one
clear error that names it, and nothing is returned half-loaded."""

import argparse
import json

import flax
import numpy as np
import pytest

from lumiere_jax import weights
from lumiere_jax.commands import export
from lumiere_jax.config import finalize, load_config
from lumiere_jax.errors import UserError
from lumiere_jax.pipelines import generate


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  directory = tmp_path_factory.mktemp("models")
  config = load_config("shapes_tiny:t2v")
  params = generate.fresh_params(config)
  weights.export_model(config, params, "tiny", "a fresh tiny t2v model", directory)
  return directory, config, params


def _flat(tree):
  return {k: np.asarray(v) for k, v in flax.traverse_util.flatten_dict(tree).items()}


def test_export_then_load_by_name_round_trips(exported):
  directory, config, params = exported
  loaded_config, loaded = weights.load_model(name="tiny", directory=directory)
  assert loaded_config.to_dict() == config.to_dict() and loaded_config.is_locked
  want, got = _flat(params), _flat(loaded)
  assert want.keys() == got.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])
  assert weights.shipped_names(directory) == ["tiny"]


def test_unknown_name_lists_the_shipped_ones(exported):
  directory, _, _ = exported
  with pytest.raises(UserError, match=r"no shipped model named 'nope'; shipped models: tiny"):
    weights.load_model(name="nope", directory=directory)


def _copy(directory, tmp_path):
  for path in directory.iterdir():
    (tmp_path / path.name).write_bytes(path.read_bytes())
  return tmp_path


def test_corrupt_weights_are_refused_naming_the_file(exported, tmp_path):
  directory = _copy(exported[0], tmp_path)
  data = bytearray((directory / "tiny.safetensors").read_bytes())
  data[-1] ^= 0xFF
  (directory / "tiny.safetensors").write_bytes(bytes(data))
  with pytest.raises(UserError, match=r"tiny.safetensors: checksum .* differs"):
    weights.load_model(name="tiny", directory=directory)
  (directory / "tiny.safetensors").unlink()
  with pytest.raises(UserError, match=r"tiny.safetensors are missing"):
    weights.load_model(name="tiny", directory=directory)


def test_weights_that_do_not_fit_the_config_are_refused(exported, tmp_path):
  directory = _copy(exported[0], tmp_path)
  config = json.loads((directory / "tiny.json").read_text())
  config["model"]["temporal"]["kernel_size"] = 5  # same arrays, other shapes
  (directory / "tiny.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match=r"tiny.safetensors: .* is \(3, .*\), expected \(5, "):
    weights.load_model(name="tiny", directory=directory)
  config["model"]["temporal"]["kernel_size"] = 3
  config["model"]["block_out_channels"] = [32, 64, 128]  # arrays the file does not have
  (directory / "tiny.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match=r"do not match the model's config: missing \['backbo"):
    weights.load_model(name="tiny", directory=directory)


def test_checkpoint_and_name_together_are_refused():
  with pytest.raises(UserError, match="not both"):
    weights.load_model(checkpoint="x", name="y")


def test_export_stores_the_sampling_defaults_it_is_given():
  """`lumiere export`'s sampling flags become the model's config.diffusion defaults (what
  generate, demo and eval use without flags); flags not given keep the run's values."""
  parser = argparse.ArgumentParser()
  export.add_arguments(parser)
  args = parser.parse_args(["--checkpoint", "x", "--name", "m", "--steps", "16",
                            "--time-power", "2", "--negative-prompt", "blue"])
  config = load_config("shapes_tiny:t2v")
  before = config.diffusion.to_dict()
  assert before["time_power"] == 1.0  # so a 2.0 below comes from the flag
  out = finalize(config.unlock(), export.sampling_overrides(args)).diffusion
  assert (out.steps, out.time_power, out.negative_prompt) == (16, 2.0, "blue")
  assert out.guidance == before["guidance"]
