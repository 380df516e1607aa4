"""Logical axis names -> mesh PartitionSpecs, from the config's rules.

A rule maps a logical name to mesh axes; rules are tried in order. A candidate is skipped
when one of its mesh axes is already used by another dimension of the same array or when
the mesh axes do not divide the dimension, so every spec this module makes is valid for
the array's shape (a width of 3 input channels simply stays replicated).
"""

import contextlib
import math
from typing import Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[Tuple[str, Optional[object]]]


def _as_tuple(mesh_axes) -> tuple:
  if mesh_axes is None:
    return ()
  return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def logical_to_spec(logical_axes: Sequence[Optional[str]], shape: Sequence[int],
                    rules: Rules, mesh_sizes: Mapping[str, int]) -> PartitionSpec:
  used = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    chosen = None
    for rule_name, mesh_axes in rules:
      if rule_name != name:
        continue
      axes = tuple(a for a in _as_tuple(mesh_axes) if mesh_sizes.get(a, 1) > 1)
      if not axes:
        break  # maps to replicated (or to size-1 mesh axes only)
      if used.intersection(axes) or dim % math.prod(mesh_sizes[a] for a in axes):
        continue
      chosen = axes if len(axes) > 1 else axes[0]
      used.update(axes)
      break
    spec.append(chosen)
  while spec and spec[-1] is None:
    spec.pop()
  return PartitionSpec(*spec)


def param_specs(boxed_abstract_params, rules: Rules, mesh_sizes: Mapping[str, int]):
  """PartitionSpec tree for (abstract) params still boxed as LogicallyPartitioned."""

  def spec(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      return logical_to_spec(leaf.names, leaf.value.shape, rules, mesh_sizes)
    return PartitionSpec()

  return jax.tree_util.tree_map(spec, boxed_abstract_params,
                                is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def mesh_sizes(mesh: Mesh) -> dict:
  return dict(mesh.shape)


def named_shardings(specs, mesh: Mesh):
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, PartitionSpec))


def flax_rules(rules: Rules) -> tuple:
  """The config's rules in the form flax's with_logical_constraint expects."""
  return tuple((name, mesh_axes if mesh_axes is None or isinstance(mesh_axes, str)
                else tuple(mesh_axes)) for name, mesh_axes in rules)


def constrain(x, logical_axes: Sequence[Optional[str]]):
  """`nn.with_logical_constraint` with this module's rule semantics: a rule whose mesh
  axes do not divide the dimension falls through to the next. (Flax's would shard the
  dimension unevenly, padded, and keep those mesh axes from the array's other
  dimensions.) So a clip's 'time' takes the devices that a batch of one cannot use
  (lumiere_base:t2v at one clip per 8 devices). A no-op outside `activation_sharding`."""
  rules = nn.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  spec = logical_to_spec(logical_axes, x.shape, rules, dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
  """Context in which the model's logical activation constraints use `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(flax_rules(rules)):
    yield
