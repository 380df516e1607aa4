"""Models for inference: by training workdir (EMA weights), by step, or by shipped name.

`load_model(checkpoint=..., step=..., name=...) -> (config, params)` is the one entry
point of generation, evaluation and the demo. `train/checkpoint.py` keeps saving and
restoring training state; this module only reads.

Shipped models live in the package (`lumiere_jax/assets/models/`), listed by
`manifest.json`:

  {"models": {"shapes_t2v": {"weights": "shapes_t2v.safetensors",
                             "config": "shapes_t2v.json",
                             "sha256": "<hex digest of the weights file>",
                             "description": "..."}}}

The weights are a safetensors file of the full parameter tree (keys are '/'-joined
paths, e.g. 'backbone/conv_in/kernel'); the config is the run's config as JSON, its
`diffusion` section holding the sampling defaults the model was evaluated with. A file
whose checksum, keys or shapes differ from what the manifest and config promise is refused
in one line naming the file and the difference, before anything is returned.
"""

import hashlib
import json
import pathlib
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import safetensors
import safetensors.flax

from lumiere_jax.config import finalize
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.models import build
from lumiere_jax.train import checkpoint as train_checkpoint

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "models"
MANIFEST = "manifest.json"
DEFAULT_MODEL = "shapes_t2v"


def manifest(directory: pathlib.Path = ASSETS) -> dict:
  """{name: entry} of the shipped models in `directory` (empty if it has none)."""
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())["models"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"model manifest {path} is unreadable: {e}") from None


def shipped_names(directory: pathlib.Path = ASSETS) -> list:
  return sorted(manifest(directory))


def load_model(checkpoint: Optional[str] = None, name: Optional[str] = None,
               step: Optional[int] = None, use_ema: bool = True,
               directory: pathlib.Path = ASSETS):
  """(locked config, full parameter tree on the first device).

  `checkpoint`: a training workdir (its newest step, or `step`), its checkpoints/ folder or
  one step folder; the trained groups come from the EMA unless `use_ema` is False.
  `name`: a shipped model. Neither: the default shipped model."""
  if checkpoint is not None and name is not None:
    raise UserError("give a checkpoint or a model name, not both")
  if checkpoint is None:
    if step is not None:
      raise UserError("a step selects among a workdir's checkpoints; give --checkpoint")
    return load_shipped(name or DEFAULT_MODEL, directory)
  return load_workdir(checkpoint, step, use_ema)


def model_config(checkpoint: Optional[str] = None, name: Optional[str] = None,
                 step: Optional[int] = None, directory: pathlib.Path = ASSETS):
  """The locked config of the model `load_model` would load, without reading its
  weights: what a command checks a request against before loading anything."""
  if checkpoint is not None and name is not None:
    raise UserError("give a checkpoint or a model name, not both")
  if checkpoint is None:
    if step is not None:
      raise UserError("a step selects among a workdir's checkpoints; give --checkpoint")
    directory = pathlib.Path(directory)
    return _read_config(directory / _entry(name or DEFAULT_MODEL, directory)["config"])
  return finalize(train_checkpoint.load_run_config(_step_path(checkpoint, step)))


def load_workdir(path, step: Optional[int] = None, use_ema: bool = True):
  path = _step_path(path, step)
  config = finalize(train_checkpoint.load_run_config(path))
  return config, train_checkpoint.load_trained_params(path, config, use_ema=use_ema)


def _step_path(path, step: Optional[int]) -> pathlib.Path:
  """The workdir, or its step folder when `step` is given (refused if not there)."""
  path = pathlib.Path(path)
  if step is None:
    return path
  directory, _ = train_checkpoint.find_checkpoint(path)
  path = directory / str(step)
  if not train_checkpoint.is_complete(path):
    raise UserError(f"checkpoint {directory} has no step {step} (steps: "
                    f"{', '.join(map(str, train_checkpoint.committed_steps(directory)))})")
  return path


def load_shipped(name: str, directory: pathlib.Path = ASSETS):
  directory = pathlib.Path(directory)
  entry = _entry(name, directory)
  config = _read_config(directory / entry["config"])
  params = _read_weights(directory / entry["weights"], entry["sha256"], config)
  return config, params


def _entry(name: str, directory: pathlib.Path) -> dict:
  models = manifest(directory)
  if name not in models:
    known = ", ".join(sorted(models)) or "none (this install ships no models)"
    raise UserError(f"no shipped model named {name!r}; shipped models: {known}")
  return models[name]


def _read_config(path: pathlib.Path) -> ml_collections.ConfigDict:
  if not path.is_file():
    raise UserError(f"model config {path} is missing")
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"model config {path} is not valid JSON: {e}") from None
  return finalize(train_checkpoint.config_from_saved(saved))


def _read_weights(path: pathlib.Path, sha256: str, config) -> dict:
  if not path.is_file():
    raise UserError(f"model weights {path} are missing")
  data = path.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != sha256:
    raise UserError(f"model weights {path}: checksum {digest[:12]}... differs from the "
                    f"manifest's {sha256[:12]}... (a corrupt or replaced file)")
  try:  # read from the file: the in-memory loader has no bfloat16
    with safetensors.safe_open(str(path), framework="flax") as f:
      flat = {key: f.get_tensor(key) for key in f.keys()}
  except Exception as e:  # safetensors raises its own error types
    raise UserError(f"model weights {path} are unreadable: {e}") from None
  expected = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(
      nn.meta.unbox(build.abstract_params(config))).items()}
  missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  if missing or extra:
    raise UserError(f"model weights {path} do not match the model's config: missing "
                    f"{missing[:3]}, unexpected {extra[:3]}")
  wrong = [f"{k} is {flat[k].shape}, expected {expected[k].shape}"
           for k in sorted(expected) if flat[k].shape != expected[k].shape]
  if wrong:
    raise UserError(f"model weights {path}: {wrong[0]} ({len(wrong)} arrays differ)")
  device = jax.devices()[0]
  tree = {tuple(k.split("/")): jax.device_put(v.astype(expected[k].dtype), device)
          for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(tree)


def export_model(config, params: dict, name: str, description: str,
                 directory: pathlib.Path = ASSETS, dtype: str = "float32") -> pathlib.Path:
  """Writes `name`'s weights (safetensors, `dtype`) and config, then its manifest entry
  (each file atomically, the manifest last, so it only lists complete models)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = {"/".join(k): jnp.asarray(v, dtype)
          for k, v in flax.traverse_util.flatten_dict(params).items()}
  weights = safetensors.flax.save(flat)
  weights_name, config_name = f"{name}.safetensors", f"{name}.json"
  atomic.write_bytes(directory / weights_name, weights)
  atomic.write_text(directory / config_name, json.dumps(config.to_dict(), indent=1,
                                                        default=list) + "\n")
  models = manifest(directory)
  models[name] = {"weights": weights_name, "config": config_name,
                  "sha256": hashlib.sha256(weights).hexdigest(), "description": description}
  atomic.write_text(directory / MANIFEST,
                    json.dumps({"models": dict(sorted(models.items()))}, indent=1) + "\n")
  return directory / weights_name
