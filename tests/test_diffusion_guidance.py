"""Classifier-free guidance, conditioning dropout and thresholding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.diffusion import guidance


def toy_denoiser(x, t, cond):
  """Different, nonlinear answers for different conditioning, so guidance is visible."""
  return jnp.tanh(x * cond["emb"][:, :1, None, None]) + t[:, None, None, None] * cond["bias"]


def make_inputs(batch=4):
  k0, k1, k2 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k0, (batch, 3, 4, 3))
  t = jax.random.uniform(k1, (batch,))
  cond = {"emb": jax.random.normal(k2, (batch, 2)), "bias": jnp.full((batch, 1, 1, 1), 0.5)}
  uncond = {"emb": jnp.ones((1, 2)), "bias": jnp.zeros((1, 1, 1, 1))}
  return x, t, cond, uncond


def test_scale_one_is_conditional_and_zero_is_unconditional():
  x, t, cond, uncond = make_inputs()
  full_uncond = jax.tree_util.tree_map(lambda u: jnp.broadcast_to(u, (4,) + u.shape[1:]),
                                       uncond)
  conditional = toy_denoiser(x, t, cond)
  unconditional = toy_denoiser(x, t, full_uncond)
  assert np.abs(np.asarray(conditional - unconditional)).max() > 0.1
  for scale, expected in ((1.0, conditional), (0.0, unconditional)):
    got = jax.jit(guidance.classifier_free_guidance(toy_denoiser, uncond, scale))(x, t, cond)
    np.testing.assert_allclose(got, expected, atol=1e-6)
  got = guidance.classifier_free_guidance(toy_denoiser, uncond, 3.0)(x, t, cond)
  np.testing.assert_allclose(got, unconditional + 3.0 * (conditional - unconditional),
                             atol=1e-5)


def test_guidance_calls_the_denoiser_once_with_both_halves():
  x, t, cond, uncond = make_inputs()
  batches = []

  def recording(x, t, c):
    batches.append(x.shape[0])
    return toy_denoiser(x, t, c)

  guidance.classifier_free_guidance(recording, uncond, 2.0)(x, t, cond)
  assert batches == [8]


def test_drop_conditioning_replaces_a_fraction_of_the_batch():
  batch = 8192
  cond = {"emb": jnp.arange(batch, dtype=jnp.float32)[:, None] + 1.0,
          "tokens": jnp.full((batch, 3), 7, jnp.int32)}
  uncond = {"emb": jnp.zeros((1, 1)), "tokens": jnp.array([[1, 2, 0]], jnp.int32)}
  out, dropped = guidance.drop_conditioning(cond, uncond, jax.random.key(1), 0.25)
  dropped = np.asarray(dropped)
  assert abs(dropped.mean() - 0.25) < 0.02
  np.testing.assert_array_equal(np.asarray(out["emb"][:, 0] == 0), dropped)
  np.testing.assert_array_equal(out["tokens"][dropped], np.tile([[1, 2, 0]], (dropped.sum(), 1)))
  np.testing.assert_array_equal(out["emb"][~dropped], cond["emb"][~dropped])


def test_static_threshold_clips():
  x = jnp.array([[-3.0, -0.5, 0.2, 2.0]])
  np.testing.assert_array_equal(guidance.threshold(x, "static"), jnp.array([[-1.0, -0.5, 0.2, 1.0]]))
  np.testing.assert_array_equal(guidance.threshold(x, "none"), x)


def test_dynamic_threshold_rescales_per_example():
  inside = jnp.linspace(-0.9, 0.9, 1000)
  outside = 2.0 * inside
  out = np.asarray(guidance.threshold(jnp.stack([inside, outside]), "dynamic", 0.995))
  np.testing.assert_array_equal(out[0], inside)  # |x| <= 1: untouched
  s = np.quantile(np.abs(np.asarray(outside)), 0.995)
  np.testing.assert_allclose(out[1], np.clip(outside, -s, s) / s, rtol=1e-6)
  assert np.abs(out[1]).max() == pytest.approx(1.0)


def test_unknown_threshold_is_rejected():
  with pytest.raises(ValueError, match="threshold"):
    guidance.threshold(jnp.zeros((1, 2)), "soft")
