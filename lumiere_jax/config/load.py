"""Loading a config: `NAME[:VARIANT]` (a shipped config) or `PATH.py[:VARIANT]` (any
file with `get_config(arg)`), then `a.b=value` overrides, validation and the lock.

The shipped configs are the repository's top-level configs/ folder, which setup.cfg
installs as the package `lumiere_jax.configs`, so a name resolves the same way from any
working directory, in a wheel or in a checkout.
"""

import ast
import difflib
import importlib
import importlib.util
import pathlib
import traceback
import types
from typing import Iterable, List, Tuple

import ml_collections

from lumiere_jax.config.validate import validate
from lumiere_jax.errors import UserError

SHIPPED_PACKAGE = "lumiere_jax.configs"


def shipped_dir() -> pathlib.Path:
  """The folder of the shipped configs: the installed `lumiere_jax.configs` package, or
  configs/ beside the package in a checkout that is used without that mapping
  (PYTHONPATH, or an editable install made before it existed)."""
  try:
    package = importlib.import_module(SHIPPED_PACKAGE)
  except ModuleNotFoundError:
    return pathlib.Path(__file__).resolve().parents[2] / "configs"
  return pathlib.Path(next(iter(package.__path__)))


def shipped_names() -> List[str]:
  """The names `--config NAME` accepts."""
  return sorted(p.stem for p in shipped_dir().glob("*.py") if not p.stem.startswith("_"))


def config_file(spec: str) -> Tuple[pathlib.Path, str]:
  """(file, variant) of a spec. A target ending in .py or holding a slash is a path;
  anything else names a shipped config."""
  target, _, variant = spec.partition(":")
  if target.endswith(".py") or "/" in target:
    path = pathlib.Path(target)
    if not path.is_file():
      raise UserError(f"config file not found: {target}")
    return path, variant
  path = shipped_dir() / f"{target}.py"
  if not target or not path.is_file():
    raise UserError(f"unknown config {target!r}; the shipped configs are "
                    f"{', '.join(shipped_names())} (or give a file, PATH.py[:VARIANT])")
  return path, variant


def config_module(spec: str) -> Tuple[types.ModuleType, str]:
  """(module, variant) of a spec, the file executed afresh; a file that fails to run is
  the user's input, reported in one line."""
  path, variant = config_file(spec)
  module_spec = importlib.util.spec_from_file_location(f"lumiere_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    raise UserError(f"config file {_where(e, path)} failed to load: "
                    f"{_error_text(e)}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} defines no get_config(arg)")
  return module, variant


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """The locked, validated config of `NAME[:VARIANT]` or `PATH.py[:VARIANT]` with the
  `a.b=value` overrides applied."""
  module, variant = config_module(spec)
  path = pathlib.Path(module.__file__)
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except UserError:
    raise
  except ValueError as e:  # the shipped configs' way of refusing a variant
    raise UserError(f"{path}: {e}") from e
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    raise UserError(f"config file {_where(e, path)}: get_config raised "
                    f"{_error_text(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config returned {type(config).__name__}, "
                    f"not an ml_collections.ConfigDict")
  try:
    return finalize(config, overrides)
  except (AttributeError, KeyError, TypeError) as e:  # a ConfigDict without our fields
    raise UserError(f"config file {path} is not a lumiere config (start from a shipped "
                    f"one, e.g. configs/shapes_tiny.py): {type(e).__name__}: {e}") from e


def _where(error: BaseException, path: pathlib.Path) -> str:
  """'PATH:LINE' of the innermost line of the config file in `error`'s traceback (or its
  syntax error), so the user code that failed is named in one line."""
  def same(filename) -> bool:
    return filename is not None and pathlib.Path(filename).resolve() == path.resolve()

  if isinstance(error, SyntaxError) and error.lineno and same(error.filename):
    return f"{path}:{error.lineno}"
  lines = [line for frame, line in traceback.walk_tb(error.__traceback__)
           if same(frame.f_code.co_filename)]
  return f"{path}:{lines[-1]}" if lines else str(path)


def _error_text(error: BaseException) -> str:
  if isinstance(error, SystemExit):
    return f"SystemExit({error.code!r})"
  if isinstance(error, SyntaxError):  # its str() repeats the file and line
    return f"{type(error).__name__}: {error.msg}"
  return f"{type(error).__name__}: {error}"


def finalize(config: ml_collections.ConfigDict,
             overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Applies `a.b=value` overrides, validates, locks; returns the config."""
  apply_overrides(config, overrides)
  validate(config)
  config.lock()
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Applies `a.b=value` strings (see parse_value)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise UserError(f"override {item!r} is not of the form key=value")
    key = key.strip()
    set_field(config, key, parse_value(raw.strip(), _current(config, key)))


def parse_value(raw: str, current):
  """A Python literal, else the raw string. The field's current value decides the rest:
  a text field keeps `123` as text, a flag also takes `true`/`false`."""
  if isinstance(current, bool) and raw.lower() in ("true", "false"):
    return raw.lower() == "true"
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw
  if isinstance(current, str) and not isinstance(value, str):
    return raw
  return value


def set_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets a dotted field that must already exist; an unknown key gets a suggestion."""
  parts = key.split(".")
  node = config
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      prefix = ".".join(parts[:depth])
      close = difflib.get_close_matches(part, options, n=1)
      hint = f"; did you mean {'.'.join(filter(None, [prefix, close[0]]))!r}?" if close else ""
      raise UserError(f"unknown config key {key!r}{hint}")
    if depth < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and not _compatible(old, value):
    raise UserError(f"config key {key!r} expects {type(old).__name__}, got {value!r}")
  node[parts[-1]] = value  # a locked ConfigDict refuses new keys, not new values


def _current(config: ml_collections.ConfigDict, key: str):
  """The field's value, or None where the key does not exist (set_field then says so)."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def _compatible(old, value) -> bool:
  if isinstance(old, bool) or isinstance(value, bool):
    return isinstance(old, bool) and isinstance(value, bool)
  if isinstance(old, float):
    return isinstance(value, (int, float))
  return isinstance(value, type(old))
