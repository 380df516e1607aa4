"""Analytic FLOPs (lumiere_jax/bench/flops.py) against the traced program and XLA.

Measured on the tiny t2v config, batch 1 (CPU, jax 0.10.2): the analytic count equals the
matmul FLOPs of the traced forward and train step exactly, and is 96.0% (forward: 8.842 of
9.215 GFLOPs) and 94.2% (train step: 19.873 of 21.098 GFLOPs) of XLA's compiled
cost_analysis()['flops'], whose total also has the elementwise work (norms, activations,
softmax, adds) that the analytic count leaves out.
"""

import flax
import jax
import jax.numpy as jnp
import pytest

from lumiere_jax.bench import flops
from lumiere_jax.config import load_config
from lumiere_jax.models import build


def _abstract(tree):
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _denoiser_fns(config, batch):
  """(forward, train-step gradient, their abstract args) of the config's denoiser."""
  model = build.build_denoiser(config.model)
  params = flax.linen.meta.unbox(build.abstract_params(config))
  denoiser = {k: v for k, v in params.items() if k != "text"}
  trainable, frozen = build.split_trainable(denoiser, config.train.trainable)
  inputs = _abstract(build.example_inputs(config, batch))

  def forward(p, *a):
    return model.apply({"params": p}, *a)

  def loss(t, f, *a):
    return jnp.mean(jnp.square(forward({**t, **f}, *a)))

  return forward, (denoiser, *inputs), jax.grad(loss), (trainable, frozen, *inputs)


@pytest.mark.parametrize("size,kernel,stride", [(16, 3, 1), (8, 3, 2), (4, 3, 1), (5, 1, 1)])
def test_conv_counts_valid_taps_like_xla(size, kernel, stride):
  x = jax.ShapeDtypeStruct((2, size, size, 8), jnp.float32)
  w = jax.ShapeDtypeStruct((kernel, kernel, 8, 16), jnp.float32)
  pad = kernel // 2

  def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  taps = flops.valid_taps(size, kernel, stride)
  expected = 2 * 2 * taps * taps * 8 * 16
  assert jax.jit(conv).lower(x, w).compile().cost_analysis()["flops"] == expected
  assert flops.traced_flops(conv, x, w) == expected
  # The backward convolutions (input and kernel gradients) read the same valid taps:
  # forward + 2 backward = 3x (the square keeps the forward live in the gradient).
  grads = jax.grad(lambda x, w: jnp.square(conv(x, w)).sum(), argnums=(0, 1))
  assert flops.traced_flops(grads, x, w) == 3 * expected


@pytest.mark.parametrize("spec,overrides", [
    ("shapes_tiny:t2v", []),
    ("shapes_tiny:t2v", ["model.temporal.down_levels=(False, False)",
                         "model.temporal.text_conditioning=False",
                         "model.temporal.conv_text_conditioning=False"]),
    ("shapes_tiny:t2v", ["model.temporal.spacetime_attention=True"]),
    ("shapes_tiny:t2v", ["model.temporal.local_film=True",
                         "model.temporal.conv_text_conditioning=True",
                         "train.trainable=('temporal', 'local_film')"]),
    ("shapes_tiny:t2v", ["model.temporal.local_film=True", "model.temporal.caption_parts=2",
                         "model.temporal.spacetime_attention=True"]),
    ("shapes_tiny:t2v", ["model.temporal.film_pooling=attention",
                         "train.trainable=('temporal', 'film_pool')"]),
    ("shapes_tiny:t2v", ["model.temporal.film_pooling=attention", "model.temporal.caption_parts=2",
                         "train.trainable=('film_pool',)"]),
    ("shapes_tiny:t2v", ["model.temporal.attention_levels=(0, 1)",
                         "model.temporal.spacetime_attention=True",
                         "train.trainable=('temporal', 'level_attention')"]),
    ("shapes_tiny:t2v", ["model.temporal.attention_levels=(1,)",
                         "train.trainable=('level_attention',)"]),
    ("shapes_tiny:t2i", ["train.trainable=('backbone',)"]),
    ("shapes_tiny:ssr", ["train.trainable=('backbone', 'temporal')"]),
])
def test_analytic_flops_equal_the_traced_program(spec, overrides):
  config = load_config(spec, overrides)
  count = flops.model_flops(config, 2)
  forward, forward_args, grad, grad_args = _denoiser_fns(config, 2)
  assert count.forward == flops.traced_flops(forward, *forward_args)
  assert count.train_step == flops.traced_flops(grad, *grad_args)


def test_frozen_and_trainable_layers_cost_what_the_docstring_says():
  config = load_config("shapes_tiny:t2v")
  ops = flops.model_flops(config, 1).ops
  weighted = lambda group: {op.grad_operands for op in ops
                            if op.group == group and op.kind != "attention"}
  assert weighted(flops.BACKBONE) == {0, 1}  # frozen: F before the first temporal layer,
  assert weighted(flops.TEMPORAL) == {1, 2}  # 2F after; trainable: 2F (text k, v), else 3F
  assert ops[0].grad_operands == 0  # conv_in: nothing before it trains


def test_analytic_flops_agree_with_xla_cost_analysis():
  config = load_config("shapes_tiny:t2v")
  count = flops.model_flops(config, 1)
  forward, forward_args, grad, grad_args = _denoiser_fns(config, 1)
  xla_forward = jax.jit(forward).lower(*forward_args).compile().cost_analysis()["flops"]
  xla_train = jax.jit(grad).lower(*grad_args).compile().cost_analysis()["flops"]
  assert 0.93 < count.forward / xla_forward <= 1.0, (count.forward, xla_forward)
  assert 0.92 < count.train_step / xla_train <= 1.0, (count.train_step, xla_train)
