"""The STUNet's identities at initialisation (LUMIERE.md) and the temporal resampling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.config import load_config, temporal_factor
from lumiere_jax.models import build
from lumiere_jax.models import temporal as tl


@functools.lru_cache(maxsize=None)
def _setup(down_levels):
  config = load_config("shapes_tiny:t2v", [f"model.temporal.down_levels={down_levels}"])
  params = jax.jit(lambda r: build.init_params(config, r))(jax.random.key(0))
  # Nonzero temporal weights elsewhere must not matter at init: only the zero-initialised
  # output projections and identity resamplers make the STUNet equal the backbone.
  return config, params


def _inputs(config, batch=2):
  t, r = config.data.num_frames, config.data.resolution
  x = jax.random.normal(jax.random.key(1), (batch, t, r, r, 3))
  timesteps = jnp.array([37.0, 811.0])[:batch]
  return x, timesteps


def _stunet_and_per_frame(config, params):
  x, timesteps = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a red circle moving left",
                                                 "a blue square growing"])
  stunet = build.build_denoiser(config.model)
  video_out = jax.jit(stunet.apply)(
      {"params": {"backbone": params["backbone"], "temporal": params["temporal"]}},
      x, timesteps, emb, mask)
  image_config = load_config("shapes_tiny:t2i")
  image_model = build.build_denoiser(image_config.model)
  per_frame = jax.jit(jax.vmap(
      lambda frame: image_model.apply({"params": {"backbone": params["backbone"]}}, frame,
                                      timesteps, emb, mask), in_axes=1, out_axes=1))(x)
  return np.asarray(video_out), np.asarray(per_frame)


def test_stunet_equals_backbone_on_every_frame_without_temporal_downsampling():
  config, params = _setup((False, False))
  assert temporal_factor(config.model) == 1
  video_out, per_frame = _stunet_and_per_frame(config, params)
  np.testing.assert_allclose(video_out, per_frame, atol=1e-5, rtol=0)


def test_stunet_equals_backbone_on_every_nth_frame_with_temporal_downsampling():
  config, params = _setup((True, True))
  n = temporal_factor(config.model)
  assert n == 4
  video_out, per_frame = _stunet_and_per_frame(config, params)
  np.testing.assert_allclose(video_out[:, ::n], per_frame[:, ::n], atol=1e-5, rtol=0)
  # The other frames are not the backbone's: N really is the period of the identity.
  others = [f for f in range(config.data.num_frames) if f % n]
  per_frame_error = np.abs(video_out[:, others] - per_frame[:, others]).max(axis=(0, 2, 3, 4))
  assert (per_frame_error > 1e-2).all()


def _apply(module, x):
  params = module.init(jax.random.key(0), x)
  return np.asarray(module.apply(params, x))


def test_temporal_downsample_is_stride_two_identity():
  x = jax.random.normal(jax.random.key(0), (2, 8, 4, 4, 16))
  np.testing.assert_array_equal(_apply(tl.TemporalDownsample(), x), np.asarray(x)[:, ::2])


def test_temporal_upsample_duplicates_frames_without_amplitude_change():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4, 16))
  np.testing.assert_array_equal(_apply(tl.TemporalUpsample(), x),
                                np.repeat(np.asarray(x), 2, axis=1))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_down_then_up_is_nearest_neighbour_with_last_frame_intact(kernel_size):
  x = jax.random.normal(jax.random.key(2), (1, 8, 2, 2, 8))
  down = _apply(tl.TemporalDownsample(kernel_size), x)
  up = _apply(tl.TemporalUpsample(kernel_size), jnp.asarray(down))
  expected = np.repeat(np.asarray(x)[:, ::2], 2, axis=1)  # frame 2k and 2k+1 <- 2k
  np.testing.assert_array_equal(up, expected)
  constant = jnp.full((1, 8, 2, 2, 8), 0.7)
  round_trip = _apply(tl.TemporalUpsample(kernel_size),
                      jnp.asarray(_apply(tl.TemporalDownsample(kernel_size), constant)))
  np.testing.assert_array_equal(round_trip, np.full_like(round_trip, 0.7))  # last not halved


def test_inflation_blocks_are_zero_residual_at_init():
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 4, 16))
  np.testing.assert_array_equal(_apply(tl.ConvInflationBlock(groups=4), x), np.asarray(x))
  context = jax.random.normal(jax.random.key(4), (2, 5, 16))
  for spacetime in (False, True):
    block = tl.AttentionInflationBlock(heads=4, spacetime=spacetime)
    params = block.init(jax.random.key(0), x, context)
    np.testing.assert_array_equal(block.apply(params, x, context), x)


@pytest.mark.parametrize("spacetime", [False, True])
def test_spacetime_attention_mixes_pixels_and_temporal_attention_does_not(spacetime):
  x = jax.random.normal(jax.random.key(3), (1, 4, 4, 4, 16))
  context = jax.random.normal(jax.random.key(4), (1, 5, 16))
  block = tl.AttentionInflationBlock(heads=4, spacetime=spacetime)
  params = block.init(jax.random.key(0), x, context)
  params = jax.tree_util.tree_map(  # a trained-looking output projection
      lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape), params)
  nudged = x.at[0, 0, 0, 0, 0].add(1.0)  # one channel: LayerNorm removes a uniform shift
  changed = np.abs(np.asarray(block.apply(params, nudged, context)
                              - block.apply(params, x, context))).max(axis=(0, 1, 4))
  # Per-pixel temporal attention changes only the nudged pixel; space-time attention
  # spreads the change to every pixel.
  others = np.delete(changed.reshape(-1), 0)
  assert changed[0, 0] > 1e-3
  assert (others > 1e-6).all() if spacetime else (others == 0).all()


def test_spacetime_position_embedding_tells_every_token_apart():
  pos = np.asarray(tl.spacetime_position_embedding(4, 8, 8, 64)).reshape(-1, 64)
  distances = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
  np.fill_diagonal(distances, np.inf)
  assert distances.min() > 0.1


def test_pooled_text_is_the_mean_over_valid_tokens():
  context = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
  mask = jnp.array([[True, True, False], [True, False, False]])
  np.testing.assert_array_equal(tl.pooled_text(context, mask), [[1.0, 2.0], [6.0, 7.0]])


def test_text_film_is_zero_at_init_and_then_follows_the_caption():
  """The FiLM of the conv blocks changes nothing at init (the block stays the identity);
  once trained, two captions give two outputs, and a caption gives the same output
  whatever follows its valid tokens."""
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 4, 16))
  text = jax.random.normal(jax.random.key(4), (2, 8))
  block = tl.ConvInflationBlock(groups=4, text_conditioning=True)
  params = block.init(jax.random.key(0), x, text)["params"]
  np.testing.assert_array_equal(block.apply({"params": params}, x, text), x)
  trained = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape),
                         params)
  out = block.apply({"params": trained}, x, text)
  same_x = jnp.stack([x[0], x[0]])
  differs = block.apply({"params": trained}, same_x, text)
  assert not np.allclose(differs[0], differs[1], atol=1e-3)
  assert not np.allclose(out, x, atol=1e-3)
  context = jax.random.normal(jax.random.key(6), (1, 4, 8))
  padded = context.at[:, 2:].set(99.0)
  mask = jnp.array([[True, True, False, False]])
  np.testing.assert_array_equal(tl.pooled_text(context, mask), tl.pooled_text(padded, mask))


def test_identity_kernel_refuses_channel_change():
  with pytest.raises(ValueError, match="c_in == c_out"):
    tl.identity_temporal_kernel(None, (3, 4, 8))


def test_inflate_reuses_backbone_and_text_unchanged():
  config, params = _setup((True, True))
  t2i = {"backbone": params["backbone"], "text": params["text"]}
  inflated = build.inflate(t2i, config, jax.random.key(7))
  assert inflated["backbone"] is t2i["backbone"]
  assert inflated["text"] is t2i["text"]
  assert set(inflated) == {"backbone", "temporal", "text"}


def test_time_embedding_follows_temporal_downsampling():
  """Per-video tensors are broadcast by the current frame count, so videos with different
  timesteps stay independent after the temporal down-sampling (a batch/frame bookkeeping
  bug would mix them)."""
  config, params = _setup((True, True))
  x, _ = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a", "b"])
  stunet = build.build_denoiser(config.model)
  apply = jax.jit(lambda ts, v, e, m: stunet.apply(
      {"params": {"backbone": params["backbone"], "temporal": params["temporal"]}},
      v, ts, e, m))
  both = apply(jnp.array([37.0, 811.0]), x, emb, mask)
  swapped = apply(jnp.array([811.0, 37.0]), x[::-1], emb[::-1], mask[::-1])
  np.testing.assert_allclose(both[::-1], swapped, atol=1e-5)
