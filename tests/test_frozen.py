"""Frozen parameters get no weight gradients (not computed at all) and no optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lumiere_jax.config import load_config
from lumiere_jax.models import build

SMALL = ["data.num_frames=8", "data.resolution=16"]


def _loss_fn(config):
  model = build.build_denoiser(config.model)
  x = jax.random.normal(jax.random.key(1), build.denoiser_input_shape(config, 2))
  context = jax.random.normal(jax.random.key(2), (2, config.text.max_length, config.text.width))
  mask = jnp.ones(context.shape[:2], bool)

  def loss(denoiser_params):
    out = model.apply({"params": denoiser_params}, x, jnp.array([100.0, 700.0]), context, mask)
    return jnp.mean(jnp.square(out - x))

  return loss


def test_labels_follow_the_stage():
  config = load_config("shapes_tiny:t2v", SMALL)
  params = build.abstract_params(config)
  labels = build.param_labels(params, config.train.trainable)
  assert set(jax.tree_util.tree_leaves(labels["temporal"])) == {build.TRAINABLE}
  assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {build.FROZEN}
  assert set(jax.tree_util.tree_leaves(labels["text"])) == {build.FROZEN}
  t2i = load_config("shapes_tiny:t2i")
  t2i_labels = build.param_labels(build.abstract_params(t2i), t2i.train.trainable)
  assert set(jax.tree_util.tree_leaves(t2i_labels["backbone"])) == {build.TRAINABLE}
  assert set(jax.tree_util.tree_leaves(t2i_labels["text"])) == {build.FROZEN}
  assert t2i.train.frozen_at_init == ("text",)


def test_frozen_params_get_no_gradient_and_no_optimizer_state():
  config = load_config("shapes_tiny:t2v", SMALL)
  params = jax.jit(lambda r: build.init_params(config, r))(jax.random.key(0))
  denoiser = {k: params[k] for k in ("backbone", "temporal")}
  trainable, frozen = build.split_trainable(denoiser, config.train.trainable)
  assert set(trainable) == {"temporal"} and set(frozen) == {"backbone"}
  loss = _loss_fn(config)

  frozen_step = jax.jit(jax.grad(lambda t, f: loss({**t, **f})))
  full_step = jax.jit(jax.grad(loss))
  grads = frozen_step(trainable, frozen)
  assert set(grads) == {"temporal"}
  # The gradient of the temporal layers is the same as in a whole-model gradient.
  full_grads = full_step(denoiser)
  for a, b in zip(jax.tree_util.tree_leaves(grads["temporal"]),
                  jax.tree_util.tree_leaves(full_grads["temporal"])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)

  # XLA does not compute the frozen weight gradients: the compiled step is cheaper.
  frozen_flops = frozen_step.lower(trainable, frozen).compile().cost_analysis()["flops"]
  full_flops = full_step.lower(denoiser).compile().cost_analysis()["flops"]
  assert frozen_flops < 0.9 * full_flops, (frozen_flops, full_flops)

  state = optax.adamw(1e-3).init(trainable)
  state_size = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(state))
  assert state_size == 2 * build.count_params(trainable) + 1  # mu, nu, step count
