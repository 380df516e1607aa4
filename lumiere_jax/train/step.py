"""The train step: a pure function (state, batch, rng) -> (state, metrics), and its
compilation with explicit shardings and a donated state.

Randomness: the step's key is fold_in(rng, state.step), so step n draws the same noise
whether or not the run was stopped and resumed before it.

Non-finite steps: the update is computed, then kept only when the loss, the gradient norm
and the update norm are finite; otherwise parameters, optimizer state and EMA stay as they were and the
step is counted. `jnp.where` over the trees costs one elementwise pass, far less than
the step, and keeps the program free of host round trips.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumiere_jax.parallel import sharding as sharding_lib
from lumiere_jax.train import optimizer as optimizer_lib
from lumiere_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict, rng, *, loss_fn, optimizer, schedule,
               max_ema_decay: float):
  """One optimizer update of the trainable parameters (see the module docstring)."""
  step_rng = jax.random.fold_in(rng, state.step)
  updates_done = state.step - state.nonfinite_total

  def objective(params):
    return loss_fn({**state.frozen, **params}, batch, step_rng)

  with jax.named_scope("loss_and_grads"):
    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  with jax.named_scope("optimizer"):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
  with jax.named_scope("ema"):
    decay = optimizer_lib.ema_decay(max_ema_decay, updates_done)
    ema = optax.incremental_update(params, state.ema, 1.0 - decay)

  # The update norm too: finite gradients can still overflow into the parameters.
  finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            & jnp.isfinite(optax.tree.norm(updates)))

  def if_finite(new, old):
    return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)

  new_state = state.replace(
      step=state.step + 1,
      params=if_finite(params, state.params),
      opt_state=if_finite(opt_state, state.opt_state),
      ema=if_finite(ema, state.ema),
      nonfinite_run=jnp.where(finite, 0, state.nonfinite_run + 1),
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
             "learning_rate": schedule(updates_done), "finite": finite}
  return new_state, metrics


def batch_sharding(config, mesh: Mesh) -> NamedSharding:
  """Every batch field is split along its leading (logical 'batch') axis."""
  spec = sharding_lib.logical_to_spec(("batch",), (config.data.batch_size,),
                                      config.logical_axis_rules, sharding_lib.mesh_sizes(mesh))
  return NamedSharding(mesh, spec)


def jit_train_step(config, mesh: Mesh, loss_fn, optimizer, state_shardings):
  """The jitted step with explicit in/out shardings; the state argument is donated, so
  the new state reuses the old one's buffers (no second copy of params and moments)."""
  step = functools.partial(train_step, loss_fn=loss_fn, optimizer=optimizer,
                           schedule=optimizer_lib.learning_rate_schedule(config.train),
                           max_ema_decay=config.train.ema_decay)
  replicated = NamedSharding(mesh, PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, batch_sharding(config, mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0)


def compile_train_step(config, mesh: Mesh, jitted, state, batch, rng):
  """Lowers and compiles for these (abstract or concrete) arguments, tracing inside the
  mesh's activation-sharding context so the model's logical constraints resolve.
  Returns (lowered, compiled): the lowered program's cost analysis is the global FLOPs."""
  with sharding_lib.activation_sharding(mesh, config.logical_axis_rules):
    lowered = jitted.lower(state, batch, rng)
  return lowered, lowered.compile()
