"""The import direction (DESIGN.md, Layout): the lower layers (models, diffusion, parallel,
data, io) never import config loading, training, pipelines, commands, evaluation or
weights. What a model needs from a config it gets as the config's fields or a spec built
from them. Every import counts: module level, inside functions (lazy), relative, and
importlib.import_module("...") with a literal name."""

import ast
import pathlib

import pytest

import lumiere_jax

PACKAGE = pathlib.Path(lumiere_jax.__file__).resolve().parent
LOWER = ("models", "diffusion", "parallel", "data", "io")
UPPER = ("config", "configs", "train", "pipelines", "commands", "evaluation", "weights",
         "bench", "cli")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set:
  """Every module name `source` (the text of `module`) imports, absolute."""
  package = module if is_package else module.rpartition(".")[0]
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = _absolute(node.module, node.level, package)
      names.add(base)
      names.update(f"{base}.{alias.name}" for alias in node.names)  # `from x import mod`
    elif (isinstance(node, ast.Call) and _is_import_call(node.func) and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      names.add(node.args[0].value)
  return names


def _absolute(name, level: int, package: str) -> str:
  if not level:
    return name
  parts = package.split(".")
  base = ".".join(parts[:len(parts) - level + 1])
  return f"{base}.{name}" if name else base


def _is_import_call(func) -> bool:
  if isinstance(func, ast.Attribute):
    return func.attr == "import_module"
  return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def forbidden(names) -> list:
  upper = tuple(f"lumiere_jax.{u}" for u in UPPER)
  return sorted(n for n in names if n in upper or n.startswith(tuple(f"{u}." for u in upper)))


def lower_modules():
  for layer in LOWER:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      yield path


@pytest.mark.parametrize("path", list(lower_modules()),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_lower_layers_do_not_import_upper_ones(path):
  names = imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")
  assert not forbidden(names), f"{module_name(path)} imports {forbidden(names)}"


def test_the_walk_sees_every_kind_of_import():
  source = """
import lumiere_jax.train.loop
from lumiere_jax import config as config_lib
from ..pipelines import generate
from .. import weights

def lazy():
  from lumiere_jax.evaluation import tracker
  importlib.import_module("lumiere_jax.commands.train")

from lumiere_jax.models import layers
from lumiere_jax.errors import UserError
"""
  names = imported_modules(source, "lumiere_jax.models.unet2d")
  assert forbidden(names) == [
      "lumiere_jax.commands.train", "lumiere_jax.config", "lumiere_jax.evaluation",
      "lumiere_jax.evaluation.tracker", "lumiere_jax.pipelines", "lumiere_jax.pipelines.generate",
      "lumiere_jax.train.loop", "lumiere_jax.weights"]
  assert not forbidden(imported_modules("from lumiere_jax.models import layers\n"
                                        "from . import text\n", "lumiere_jax.models.build"))
