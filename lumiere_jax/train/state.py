"""The train state, its shardings, and the sharded initialisation.

One recipe everywhere (STYLE.md habit 4): abstract shapes by eval_shape, partition specs
from the parameters' logical axis names and the config's rules, then a jit whose
out_shardings put every array where it belongs as it is created. Nothing is ever
materialised on one device and then moved.
"""

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from lumiere_jax.models import build
from lumiere_jax.parallel import sharding as sharding_lib


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes and everything a checkpoint needs to continue bit-for-bit.

  The trainable and frozen parameter groups are separate fields so that the step
  differentiates `params` only (XLA computes no weight gradients for `frozen`) and the
  optimizer state and the EMA mirror `params` only.
  """

  step: jax.Array             # int32: batches consumed, skipped ones included
  params: Any                 # trainable groups, e.g. {'temporal': ...}
  frozen: Any                 # frozen groups, e.g. {'backbone': ..., 'text': ...}
  opt_state: Any
  ema: Any                    # EMA of `params`
  nonfinite_run: jax.Array    # int32: non-finite steps in a row (0 after a good one)
  nonfinite_total: jax.Array  # int32: non-finite steps skipped in all


def state_from_params(full_params: dict, trainable, optimizer) -> TrainState:
  """A fresh state (step 0, optimizer state at its init, EMA = the parameters)."""
  params, frozen = build.split_trainable(full_params, trainable)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, frozen=frozen,
                    opt_state=optimizer.init(params),
                    ema=jax.tree_util.tree_map(jnp.copy, params),
                    nonfinite_run=zero, nonfinite_total=zero)


class Layout:
  """Shapes and shardings of one config's state on one mesh, worked out once (tracing the
  model for its abstract parameters is the slow part, so it is done a single time)."""

  def __init__(self, config, mesh: Mesh, optimizer):
    self.config, self.mesh, self.optimizer = config, mesh, optimizer
    boxed = build.abstract_params(config)
    self.abstract_params = nn.meta.unbox(boxed)
    self.param_specs = sharding_lib.param_specs(boxed, config.logical_axis_rules,
                                                sharding_lib.mesh_sizes(mesh))
    self.param_shardings = sharding_lib.named_shardings(self.param_specs, mesh)
    self.abstract_state = jax.eval_shape(
        lambda p: state_from_params(p, config.train.trainable, optimizer),
        self.abstract_params)
    self.state_shardings = sharding_lib.named_shardings(self._state_specs(), mesh)

  def _state_specs(self) -> TrainState:
    """Parameter-shaped leaves (params, EMA, Adam moments) follow the parameters;
    counters are replicated."""
    train_specs, frozen_specs = build.split_trainable(self.param_specs,
                                                      self.config.train.trainable)
    opt_specs = optax.tree_map_params(
        self.optimizer, lambda _, spec: spec, self.abstract_state.opt_state, train_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec))
    scalar = PartitionSpec()
    return TrainState(step=scalar, params=train_specs, frozen=frozen_specs,
                      opt_state=opt_specs, ema=train_specs, nonfinite_run=scalar,
                      nonfinite_total=scalar)

  def state_target(self) -> TrainState:
    """The state as ShapeDtypeStructs with their shardings (the restore target)."""
    return with_shardings(self.abstract_state, self.state_shardings)

  def params_target(self) -> dict:
    """The full parameters as ShapeDtypeStructs with their shardings."""
    return with_shardings(self.abstract_params, self.param_shardings)


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs that carry their NamedSharding (restore targets, lowering)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def init_params(layout: Layout, rng) -> dict:
  """Freshly initialised full parameters, each created directly with its sharding."""
  config = layout.config
  init = jax.jit(lambda r: build.init_params(config, r), out_shardings=layout.param_shardings)
  with sharding_lib.activation_sharding(layout.mesh, config.logical_axis_rules):
    return init(rng)


def init_state(layout: Layout, rng, pretrained: Optional[dict] = None) -> TrainState:
  """The step-0 state: fresh parameters with the `pretrained` groups (e.g. a t2i
  checkpoint's 'backbone' and 'text', already sharded) put in their place."""
  full = {**init_params(layout, rng), **(pretrained or {})}
  trainable, optimizer = layout.config.train.trainable, layout.optimizer
  make = jax.jit(lambda p: state_from_params(p, trainable, optimizer),
                 out_shardings=layout.state_shardings)
  return make(full)
