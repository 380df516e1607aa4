"""Sampling with the batch sharded over 8 (forced CPU) devices equals single-device
sampling, keeps the sharding, and moves no data between devices (no collective in the
compiled program), with guidance, thresholding, per-example noise and progress on."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lumiere_jax.diffusion import guidance, samplers, schedules
from lumiere_jax.diffusion.progress import TqdmProgress

NUM_DEVICES = 8


def test_sharded_sampling_equals_single_device():
  # tests/conftest.py forces 8 host devices before jax starts.
  assert jax.device_count() == NUM_DEVICES, jax.devices()
  schedule = schedules.cosine_schedule()
  batch, shape = 16, (4, 8, 8, 3)  # videos [B, T, H, W, C]
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 3, 3)) * 0.3

  def denoiser(x, t, cond):
    """Per-example, nonlinear, mixes space, time and the text embedding."""
    h = jax.lax.conv_general_dilated(x.reshape((-1,) + x.shape[2:]), kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = h.reshape(x.shape) + jnp.mean(x, axis=1, keepdims=True)
    emb = jnp.sum(cond["emb"] * cond["mask"][..., None], axis=(1, 2))
    return jnp.tanh(h + emb[:, None, None, None, None] * t[:, None, None, None, None])

  @functools.partial(jax.jit, static_argnames=("settings", "progress"))
  def generate(noise, keys, cond, uncond, scale, settings, progress=None):
    guided = guidance.classifier_free_guidance(denoiser, uncond, scale)
    return samplers.sample(guided, noise, cond, keys, schedule, settings, progress=progress)

  rng = np.random.default_rng(0)
  keys = jax.random.split(jax.random.key(1), batch)
  noise = samplers.initial_noise(keys, (batch,) + shape)
  cond = {"emb": jnp.asarray(rng.standard_normal((batch, 5, 4)), jnp.float32),
          "mask": jnp.asarray(rng.random((batch, 5)) < 0.7)}
  uncond = {"emb": jnp.zeros((batch, 5, 4)), "mask": jnp.ones((batch, 5), bool)}
  args = (noise, keys, cond, uncond, jnp.float32(2.5))

  mesh = jax.make_mesh((NUM_DEVICES,), ("data",), axis_types=(AxisType.Auto,))
  by_example = NamedSharding(mesh, PartitionSpec("data"))
  sharded = jax.device_put(args[:4], by_example) + (args[4],)
  single = jax.device_put(args, jax.devices()[0])

  cases = [(samplers.SamplerSettings("ddpm", steps=6, threshold="dynamic"), None),
           (samplers.SamplerSettings("ddim", steps=6, eta=0.3, prediction="x0"), None),
           (samplers.SamplerSettings("dpmpp", steps=6, threshold="static"), TqdmProgress(6))]
  for settings, progress in cases:
    compiled = generate.lower(*sharded, settings=settings, progress=progress).compile()
    moves = [op for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute")
             if op in compiled.as_text()]
    assert not moves, (settings, moves)
    out = compiled(*sharded)
    assert out.sharding.is_equivalent_to(by_example, out.ndim), out.sharding
    reference = generate(*single, settings=settings, progress=progress)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=1e-5)
