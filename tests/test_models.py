"""The STUNet's identities at initialisation (LUMIERE.md) and the temporal resampling."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trained_weights
from lumiere_jax.config import load_config, temporal_factor
from lumiere_jax.errors import ConfigError
from lumiere_jax.models import build
from lumiere_jax.models import layers
from lumiere_jax.models import stunet
from lumiere_jax.models import temporal as tl
from lumiere_jax.models import text as text_lib
from lumiere_jax.parallel import sharding


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


@pytest.mark.parametrize("shape, groups, silu", [((3, 40), 4, False), ((2, 5, 6, 32), 8, False),
                                                 ((2, 5, 6, 32), 8, True),
                                                 ((2, 3, 4, 4, 16), 16, True), ((1, 7, 8), 1, False)])
def test_group_norm_is_the_textbook_formula_and_so_are_its_gradients(shape, groups, silu):
  """Values and every gradient of GroupNorm (its gradient is written out, a custom VJP)
  against autodiff of the textbook formula, with and without the SiLU after it."""
  from lumiere_jax.models import layers
  x = jax.random.normal(jax.random.key(0), shape) * 3.0 + 1.5
  norm = layers.GroupNorm(num_groups=groups, silu=silu)
  params = nn.meta.unbox(norm.init(jax.random.key(1), x))
  params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2),
                                                                        p.shape), params)
  scale, bias = params["params"]["scale"], params["params"]["bias"]

  def textbook(x, scale, bias):  # statistics over every non-batch axis of each group
    g = x.reshape(x.shape[0], -1, groups, shape[-1] // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + 1e-5)).reshape(shape) * scale + bias
    return nn.silu(y) if silu else y

  np.testing.assert_allclose(norm.apply(params, x), textbook(x, scale, bias), atol=2e-6,
                             rtol=0)
  weights = jax.random.normal(jax.random.key(3), shape)
  ours = jax.grad(lambda x, p: jnp.sum(weights * norm.apply(p, x)), argnums=(0, 1))(x, params)
  ref = jax.grad(lambda x, s, b: jnp.sum(weights * textbook(x, s, b)), argnums=(0, 1, 2))(
      x, scale, bias)
  np.testing.assert_allclose(ours[0], ref[0], atol=2e-5, rtol=0)
  np.testing.assert_allclose(ours[1]["params"]["scale"], ref[1], atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(ours[1]["params"]["bias"], ref[2], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("frames, silu", [(1, False), (3, False), (3, True)])
def test_group_norm_folds_a_per_video_film_exactly(frames, silu):
  """GroupNorm(x, (scale, shift)) with one FiLM row per video of `frames` frames is the
  textbook GroupNorm followed by y (1 + scale) + shift (and SiLU), values and gradients."""
  from lumiere_jax.models import layers
  videos, groups, shape = 2, 4, (2 * frames, 5, 6, 16)
  keys = jax.random.split(jax.random.key(4), 4)
  x = jax.random.normal(keys[0], shape) * 2.0 - 0.5
  film = 0.3 * jax.random.normal(keys[1], (videos, 32))
  norm = layers.GroupNorm(num_groups=groups, silu=silu)
  params = jax.tree_util.tree_map(lambda p: p + 0.1 * jax.random.normal(keys[2], p.shape),
                                  nn.meta.unbox(norm.init(keys[3], x)))

  def ours(x, p, film):
    return norm.apply(p, x, (film[:, :16], film[:, 16:]))

  def textbook(x, p, film):
    g = x.reshape(x.shape[0], -1, groups, 16 // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    y = ((g - mean) / jnp.sqrt(var + 1e-5)).reshape(shape) * p["params"]["scale"]
    y = (y + p["params"]["bias"]).reshape(videos, frames, *shape[1:])
    y = y * (1 + film[:, None, None, None, :16]) + film[:, None, None, None, 16:]
    return nn.silu(y.reshape(shape)) if silu else y.reshape(shape)

  np.testing.assert_allclose(ours(x, params, film), textbook(x, params, film), atol=3e-6,
                             rtol=0)
  weights = jax.random.normal(jax.random.key(5), shape)
  grad = lambda f: jax.grad(lambda *a: jnp.sum(weights * f(*a)), argnums=(0, 1, 2))(
      x, params, film)
  for a, b in zip(jax.tree_util.tree_leaves(grad(ours)), jax.tree_util.tree_leaves(grad(textbook))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("channels, groups", [(32, 8), (64, 32), (16, 16), (12, 1)])
def test_group_sums_spread_by_matmul_equal_the_repeat_bit_for_bit(channels, groups):
  """GroupNorm spreads each group's sum back to its channels with a 0/1 matmul (so XLA:CPU
  does not fuse a per-element group index into the pass over the activation); the result
  is the repeat of the group sums exactly, eagerly and compiled, across magnitudes."""
  from lumiere_jax.models import layers
  keys = jax.random.split(jax.random.key(9), 2)
  v = (jax.random.normal(keys[0], (5, channels))
       * jnp.exp(4.0 * jax.random.normal(keys[1], (5, channels))))
  v = v.at[0, 0].set(-0.0)
  sums = v.reshape(5, groups, channels // groups).sum(-1)
  expected = np.asarray(jnp.repeat(sums, channels // groups, axis=-1))
  for f in (layers._group_sums, jax.jit(layers._group_sums, static_argnums=1)):
    np.testing.assert_array_equal(np.asarray(f(v, groups)), expected)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_group_norm_with_silu_is_silu_after_group_norm_bit_for_bit(dtype):
  """GroupNorm(silu=True) computes nn.silu(GroupNorm(x)) exactly (so the shipped models'
  samples do not change), in x's dtype, and its gradients in bfloat16 are those of the
  float32 composition rounded."""
  from lumiere_jax.models import layers
  keys = jax.random.split(jax.random.key(6), 4)
  x = (jax.random.normal(keys[0], (4, 6, 6, 16)) * 2.0 + 0.7).astype(dtype)
  film = (0.3 * jax.random.normal(keys[1], (2, 16)), 0.2 * jax.random.normal(keys[2], (2, 16)))
  params = nn.meta.unbox(layers.GroupNorm(num_groups=4).init(keys[3], x))
  fused = lambda x, p: layers.GroupNorm(num_groups=4, silu=True).apply(p, x, film)
  plain = lambda x, p: nn.silu(layers.GroupNorm(num_groups=4).apply(p, x, film))
  out = jax.jit(fused)(x, params)
  assert out.dtype == dtype
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jax.jit(plain)(x, params), np.float32))
  weights = jax.random.normal(jax.random.key(7), x.shape)
  grad = lambda f, x: jax.grad(lambda x, p: jnp.sum(weights * f(x, p).astype(jnp.float32)),
                               argnums=(0, 1))(x, params)
  ours, ref = grad(fused, x), grad(plain, x.astype(jnp.float32))
  assert ours[0].dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=tol * float(jnp.abs(b).max()),
                               rtol=0)


def test_per_sample_on_a_video_layout_sums_per_frame_first():
  """A per-channel or per-video parameter on [B, T, H, W, C] with B = 2 is repeated over
  B*T rows (its gradient summed per frame, 32 rows, not 2); value and gradient equal the
  plain broadcast, and the compiled gradient sums the activation into [B*T, C] first."""
  import re
  from lumiere_jax.models import layers
  assert layers.leading_rows((2, 16, 8, 8, 32)) == 2
  assert layers.leading_rows((32, 8, 8, 32)) == 1
  assert layers.leading_rows((2, 3, 5)) == 1  # never the position or channel axes
  x = jax.random.normal(jax.random.key(0), (2, 16, 8, 8, 32))
  for p in (jax.random.normal(jax.random.key(1), (32,)),
            jax.random.normal(jax.random.key(2), (2, 32))):
    plain = p if p.ndim == 1 else p[:, None, None, None, :]
    np.testing.assert_array_equal(x + layers.per_sample(p, x), x + plain)
    loss = lambda p, add: jnp.sum(jnp.sin(add(x, p)))
    ours = jax.jit(jax.grad(lambda p: loss(p, lambda x, p: x + layers.per_sample(p, x))))
    np.testing.assert_allclose(ours(p), jax.grad(lambda p: loss(
        p, lambda x, p: x + (p if p.ndim == 1 else p[:, None, None, None, :])))(p),
                               rtol=1e-5, atol=1e-4)
    hlo = ours.lower(p).compile().as_text()
    assert re.search(r"f32\[2,16,32\]|f32\[32,32\]", hlo), "no per-frame partial sums"


def test_repeat_rows_is_a_repeat_whose_gradient_sums_per_sample_first():
  """layers.repeat_rows equals jnp.repeat in value, gradient, forward mode and second
  order; and in the compiled gradient of a conv bias (layers.add_channel_bias) no sum goes
  from the activation straight to [C] (XLA merged the per-sample and batch sums into one
  single-core loop before; the plain broadcast still does, which keeps this test honest)."""
  import re
  from lumiere_jax.models import layers
  v = jax.random.normal(jax.random.key(0), (3, 5))
  w = jax.random.normal(jax.random.key(1), (12, 5))
  np.testing.assert_array_equal(layers.repeat_rows(v, 12), jnp.repeat(v, 4, axis=0))
  ours = lambda v: jnp.sum(w * jnp.sin(layers.repeat_rows(v, 12)))
  ref = lambda v: jnp.sum(w * jnp.sin(jnp.repeat(v, 4, axis=0)))
  np.testing.assert_allclose(jax.grad(ours)(v), jax.grad(ref)(v), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.jacfwd(ours)(v), jax.jacfwd(ref)(v), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(jax.hessian(ours)(v), jax.hessian(ref)(v), rtol=1e-5, atol=1e-6)

  y = jax.random.normal(jax.random.key(2), (8, 16, 16, 32))
  bias = jnp.zeros((32,))

  def merged_sums(add):  # reduces of >= 2 axes straight to a rank-1 result
    grad = jax.jit(jax.grad(lambda b: jnp.sum(jnp.sin(add(y, b)))))
    hlo = grad.lower(bias).compile().as_text()
    return [line for line in hlo.splitlines()
            if re.search(r"= f32\[\d+\]\S* reduce\(", line)
            and len(re.search(r"dimensions=\{([\d,]*)\}", line).group(1).split(",")) >= 2]

  assert merged_sums(lambda y, b: y + b), "the plain broadcast's gradient was not merged"
  assert not merged_sums(layers.add_channel_bias)


def test_channel_bias_gradient_is_one_matmul_over_the_rows():
  """layers.add_channel_bias on an activation with many positions per sample (outside a
  mesh): value and gradients equal the plain broadcast's, in float32 and bfloat16, and the
  compiled bias gradient is one [1, M] x [M, C] dot with no reduce of the activation left
  (XLA:CPU fused such reduces with the chain that makes dy: stop 63)."""
  import re
  from lumiere_jax.models import layers
  y = jax.random.normal(jax.random.key(0), (2, 16, 8, 8, 32))
  w = jax.random.normal(jax.random.key(1), y.shape)
  for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)):
    bias = jax.random.normal(jax.random.key(2), (32,)).astype(dtype)
    yd = y.astype(dtype)
    np.testing.assert_array_equal(np.asarray(layers.add_channel_bias(yd, bias), np.float32),
                                  np.asarray(yd + bias, np.float32))
    loss = lambda add: jax.grad(lambda y, b: jnp.sum(w * jnp.sin(add(y, b).astype(jnp.float32))),
                                argnums=(0, 1))
    ours = jax.jit(loss(layers.add_channel_bias))(yd, bias)
    ref = loss(lambda y, b: y + b)(y, bias.astype(jnp.float32))
    assert ours[1].dtype == dtype
    for a, b in zip(ours, ref):
      np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0,
                                 atol=tol * float(jnp.abs(b).max()))
  hlo = jax.jit(jax.grad(lambda b: jnp.sum(jnp.sin(layers.add_channel_bias(y, b))))).lower(
      jnp.zeros((32,))).compile().as_text()
  assert re.search(r"f32\[1,32\]\S* dot\(", hlo), "the bias gradient is not a matmul"
  assert not re.search(r"= f32\[[\d,]+\]\S* reduce\(", hlo), "a reduce is left"


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


def test_caption_adapter_is_identity_at_init_and_then_binds_words_to_their_context():
  """The adapter (its own parameter group) passes the caption through unchanged at init,
  so a STUNet with it equals the same STUNet without; trained, a token's output depends
  on the other tokens (the frozen encoder's "left" can learn whose motion it is), and
  padding stays invisible."""
  config, params = _setup((True, True))
  adapted = load_config("shapes_tiny:t2v", ["model.temporal.down_levels=(True, True)",
                                            "model.temporal.text_adapter_layers=1"])
  assert build.param_groups(adapted.model) == ("backbone", "temporal", "text", "adapter")
  fresh = jax.jit(lambda r: build.init_params(adapted, r))(jax.random.key(0))
  assert set(fresh) == {"backbone", "temporal", "text", "adapter"}
  x, timesteps = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a red circle moving left and a blue "
                                                 "square moving up", "a blue square growing"])
  plain = jax.jit(build.build_denoiser(config.model).apply)(
      {"params": build.denoiser_params(params)}, x, timesteps, emb, mask)
  with_adapter = jax.jit(build.build_denoiser(adapted.model).apply)(
      {"params": {**build.denoiser_params(params), "adapter": fresh["adapter"]}},
      x, timesteps, emb, mask)
  np.testing.assert_array_equal(with_adapter, plain)

  adapter = text_lib.CaptionAdapter(num_layers=1, num_heads=4)
  trained = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(5), p.shape),
                         fresh["adapter"])
  out = adapter.apply({"params": trained}, emb, mask)
  assert not np.allclose(out, emb, atol=1e-3)
  # The same word at the same place in another caption comes out different.
  swapped = emb.at[0, 2].set(emb[1, 2])
  moved = adapter.apply({"params": trained}, swapped, mask)
  assert not np.allclose(moved[0, 5], out[0, 5], atol=1e-4)
  padded = emb.at[1, 7:].set(99.0)
  np.testing.assert_allclose(adapter.apply({"params": trained}, padded, mask)[1, :7],
                             out[1, :7], rtol=1e-5, atol=1e-5)


def test_temporal_layers_read_the_caption_without_the_dropped_words():
  """model.temporal.caption_drop_words: the ids hold the caption, then the caption without
  those words; the backbone reads the first view only, the temporal layers the second;
  with both views equal the model is the one-view model, bit for bit."""
  config, params = _setup((True, True))
  dropping = load_config("shapes_tiny:t2v", [
      "model.temporal.down_levels=(True, True)",
      "model.temporal.caption_drop_words=('circle', 'square', 'triangle')"])
  base, tok = build.tokenizer(config), build.tokenizer(dropping)
  prompts = ["a red triangle moving left and a blue square moving up", ""]
  ids, length = tok.encode(prompts), config.text.max_length
  assert ids.shape == (2, 2 * length) and tok.views == 2 and base.views == 1
  np.testing.assert_array_equal(ids[:, :length], base.encode(prompts))
  np.testing.assert_array_equal(ids[:, length:], base.encode(
      ["a red moving left and a blue moving up", ""]))
  assert build.context_length(dropping) == 2 * length
  emb2, mask2 = build.encode_text(dropping, params, prompts)
  emb1, mask1 = build.encode_text(config, params, prompts)
  np.testing.assert_array_equal(emb2[:, :length], emb1)

  x, timesteps = _inputs(config)
  captions = ["a red circle moving left", "a red square moving left", "a blue square growing"]
  emb, mask = build.encode_text(config, params, captions)
  one_view = jax.jit(build.build_denoiser(config.model).apply)
  two_views = jax.jit(build.build_denoiser(dropping.model).apply)

  def views(first, second):  # the backbone's caption, the temporal layers' caption
    pick = lambda a: jnp.concatenate([a[first], a[second]])[None].repeat(2, 0)
    return pick(emb), pick(mask)

  trained = {"params": build.denoiser_params(trained_weights.perturbed(params, seed=7))}
  at_init = {"params": build.denoiser_params(params)}
  for weights in (at_init, trained):
    np.testing.assert_array_equal(
        two_views(weights, x, timesteps, *views(0, 0)),
        one_view(weights, x, timesteps, emb[jnp.array([0, 0])], mask[jnp.array([0, 0])]))
  # At init the temporal layers change nothing: only the backbone's caption matters.
  base_out = two_views(at_init, x, timesteps, *views(0, 1))
  np.testing.assert_array_equal(base_out, two_views(at_init, x, timesteps, *views(0, 2)))
  assert not np.allclose(base_out, two_views(at_init, x, timesteps, *views(1, 1)), atol=1e-4)
  # Trained, the temporal layers follow their own caption.
  assert not np.allclose(two_views(trained, x, timesteps, *views(0, 1)),
                         two_views(trained, x, timesteps, *views(0, 2)), atol=1e-4)


def test_caption_parts_give_each_object_a_token_of_its_own():
  """model.temporal.caption_parts: the ids hold the caption, then each part of it (cut at
  "and") as a caption of its own, a missing part all PAD; the temporal layers read the
  caption plus one pooled token per part. A part token is exactly the one-object caption's
  pooled encoding, so swapping two objects' motions changes the tokens (the mean-pooled
  caption hardly changes); one-object captions read as the one-view model does."""
  config, params = _setup((True, True))
  parts = load_config("shapes_tiny:t2v", ["model.temporal.down_levels=(True, True)",
                                          "model.temporal.caption_parts=2"])
  base, tok = build.tokenizer(config), build.tokenizer(parts)
  length = config.text.max_length
  two, swapped = ("a red circle moving left and a blue square moving up",
                  "a red circle moving up and a blue square moving left")
  ids = tok.encode([two, "a red circle growing", ""]).reshape(3, 3, length)
  assert tok.views == 3 and build.context_length(parts) == 3 * length
  np.testing.assert_array_equal(ids[:, 0], base.encode([two, "a red circle growing", ""]))
  np.testing.assert_array_equal(ids[0, 1:], base.encode(["a red circle moving left",
                                                         "a blue square moving up"]))
  np.testing.assert_array_equal(ids[1:, 1], base.encode(["a red circle growing", ""]))
  assert (ids[1:, 2] == text_lib.PAD).all()  # no second part: nothing to read

  emb, mask = build.encode_text(parts, params, [two, swapped])
  views = lambda a: text_lib.split_views(a, 3)
  context, context_mask = stunet.with_part_tokens(views(emb)[0], views(mask)[0],
                                                  views(emb)[1:], views(mask)[1:])
  assert context.shape[1] == length + 2 and bool(context_mask[:, length:].all())
  one, one_mask = build.encode_text(config, params, ["a red circle moving left"])
  np.testing.assert_allclose(context[0, length], tl.pooled_text(one, one_mask)[0],
                             rtol=1e-6, atol=1e-6)
  pooled = tl.pooled_text(views(emb)[0], views(mask)[0])
  assert float(jnp.linalg.norm(context[0, length:] - context[1, length:])) > 5 * float(
      jnp.linalg.norm(pooled[0] - pooled[1]))

  # One object: its part tokens are masked, so the model is the one-view model (to
  # rounding); two objects at init: the temporal layers are the identity, so only the
  # backbone's caption matters, bit for bit.
  x, timesteps = _inputs(config)
  one_view = jax.jit(build.build_denoiser(config.model).apply)
  with_parts = jax.jit(build.build_denoiser(parts.model).apply)
  trained = {"params": build.denoiser_params(trained_weights.perturbed(params, seed=7))}
  at_init = {"params": build.denoiser_params(params)}
  captions = ["a red circle moving left", "a blue square growing"]
  np.testing.assert_allclose(
      with_parts(trained, x, timesteps, *build.encode_text(parts, params, captions)),
      one_view(trained, x, timesteps, *build.encode_text(config, params, captions)),
      rtol=1e-5, atol=1e-5)
  pair = [two, two]
  np.testing.assert_array_equal(
      with_parts(at_init, x, timesteps, *build.encode_text(parts, params, pair)),
      one_view(at_init, x, timesteps, *build.encode_text(config, params, pair)))
  # Trained, the parts are read: the same caption with the parts of the one whose motions
  # are swapped (the same words, so the same pooled part-free reading) differs.
  emb_p, mask_p = build.encode_text(parts, params, [two, swapped])
  mixed = lambda a: jnp.concatenate([a[0, :length], a[1, length:]])[None].repeat(2, 0)
  first = jnp.array([0, 0])
  assert not np.allclose(with_parts(trained, x, timesteps, emb_p[first], mask_p[first]),
                         with_parts(trained, x, timesteps, mixed(emb_p), mixed(mask_p)),
                         atol=1e-4)


def _assert_new_group_unchanged_at_init(config, params, group, overrides):
  """A STUNet with `overrides` has one more parameter group, `group`; freshly initialised
  it leaves a trained (perturbed) model's prediction bit-for-bit unchanged, and trained
  (perturbed too) it changes it. Returns the fresh group's parameters."""
  extended = load_config("shapes_tiny:t2v", ["model.temporal.down_levels=(True, True)",
                                             *overrides])
  fresh = jax.jit(lambda r: build.init_params(extended, r))(jax.random.key(0))
  assert set(fresh) == set(params) | {group}
  assert build.param_groups(extended.model) == build.param_groups(config.model) + (group,)
  x, timesteps = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a red circle moving left",
                                                 "a blue square growing"])
  trained = build.denoiser_params(trained_weights.perturbed(params, seed=7))
  without = jax.jit(build.build_denoiser(config.model).apply)(
      {"params": trained}, x, timesteps, emb, mask)
  with_group = jax.jit(build.build_denoiser(extended.model).apply)
  np.testing.assert_array_equal(
      with_group({"params": {**trained, group: fresh[group]}}, x, timesteps, emb, mask),
      without)
  moved = trained_weights.perturbed(fresh[group], seed=3)
  assert not np.allclose(with_group({"params": {**trained, group: moved}},
                                    x, timesteps, emb, mask), without, atol=1e-4)
  return fresh[group]


def test_local_film_is_the_identity_at_init_and_modulates_each_position_apart():
  """model.temporal.local_film: a new group 'local_film' whose zero-initialised output
  leaves a trained model unchanged; trained, each (frame, row, column) gets its own scale
  and shift from what it reads of the caption, where the pooled FiLM gives one per clip."""
  config, params = _setup((True, True))
  _assert_new_group_unchanged_at_init(config, params, "local_film",
                                      ["model.temporal.local_film=True"])
  emb, _ = build.encode_text(config, params, ["a red circle moving left",
                                              "a blue square growing"])
  # One block on its own: two positions holding different features read the caption
  # differently, and the same position reads two captions differently.
  block = tl.LocalFiLM(heads=4)
  red, blue = jax.random.normal(jax.random.key(2), (2, 32))
  video = jnp.zeros((1, 2, 4, 4, 32)).at[:, :, 0, 0].set(red).at[:, :, 3, 3].set(blue)
  block_params = block.init(jax.random.key(1), video, emb[:1], None)["params"]
  block_params = trained_weights.perturbed(block_params, seed=5)
  film = block.apply({"params": block_params}, video, emb[:1], None)
  assert film.shape == (1, 2, 4, 4, 64)
  assert not np.allclose(film[0, 0, 0, 0], film[0, 0, 3, 3], atol=1e-4)
  np.testing.assert_allclose(film[0, 0, 1, 1], film[0, 1, 2, 2], rtol=1e-5, atol=1e-6)
  other = block.apply({"params": block_params}, video, emb[1:], None)
  assert not np.allclose(film[0, 0, 0, 0], other[0, 0, 0, 0], atol=1e-4)


def test_film_pool_is_the_pooled_caption_at_init_and_then_pools_per_position():
  """model.temporal.film_pooling="attention": a new group 'film_pool' whose zero query
  weighs every valid token alike, so the conv blocks' FiLM reads exactly the pooled caption
  and a trained model is unchanged (to rounding); with a query, two positions holding
  different features pool the caption differently, and PAD tokens are never read."""
  config, params = _setup((True, True))
  pooled = load_config("shapes_tiny:t2v", ["model.temporal.down_levels=(True, True)",
                                           "model.temporal.film_pooling=attention"])
  pool_params = jax.jit(lambda r: build.init_params(pooled, r))(jax.random.key(0))
  assert build.param_groups(pooled.model) == build.param_groups(config.model) + ("film_pool",)
  x, timesteps = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a red circle moving left and a blue "
                                                 "square moving up", "a blue square growing"])
  trained = build.denoiser_params(trained_weights.perturbed(params, seed=7))
  without = jax.jit(build.build_denoiser(config.model).apply)(
      {"params": trained}, x, timesteps, emb, mask)
  with_pool = jax.jit(build.build_denoiser(pooled.model).apply)(
      {"params": {**trained, "film_pool": pool_params["film_pool"]}}, x, timesteps, emb, mask)
  np.testing.assert_allclose(with_pool, without, rtol=0, atol=2e-5 * float(jnp.abs(without).max()))

  block = tl.FiLMPool(heads=4)
  red, blue = jax.random.normal(jax.random.key(2), (2, 32))
  video = jnp.zeros((1, 2, 4, 4, 32)).at[:, :, 0, 0].set(red).at[:, :, 3, 3].set(blue)
  bias = layers.mask_to_bias(mask[:1, None, None, :])
  block_params = block.init(jax.random.key(1), video, emb[:1], bias)["params"]
  at_init = block.apply({"params": block_params}, video, emb[:1], bias)
  np.testing.assert_allclose(at_init, jnp.broadcast_to(
      tl.pooled_text(emb[:1], mask[:1])[:, None, None, None], at_init.shape), atol=1e-5)
  moved = trained_weights.perturbed(block_params, seed=5, scale=1.0)
  out = block.apply({"params": moved}, video, emb[:1], bias)
  assert not np.allclose(out[0, 0, 0, 0], out[0, 0, 3, 3], atol=1e-3)
  padded = emb[:1].at[:, ~np.asarray(mask[0])].set(99.0)
  np.testing.assert_allclose(block.apply({"params": moved}, video, padded, bias), out, atol=1e-5)


def test_level_attention_is_the_identity_at_init_and_then_mixes_frames_per_pixel():
  """model.temporal.attention_levels: a new group 'level_attention' of temporal attention
  blocks after the conv blocks of the named levels, zero-initialised, so a trained model is
  unchanged; once trained, a block mixes the frames of a pixel and nothing else: a change
  in one frame moves the other frames of that pixel, not the pixel beside it."""
  config, params = _setup((True, True))
  fresh = _assert_new_group_unchanged_at_init(config, params, "level_attention",
                                              ["model.temporal.attention_levels=(0, 1)"])
  assert sorted(fresh) == sorted(f"blocks_{name}" for name in stunet.conv_block_names(
      stunet.UNetSpec.from_config(config.model)))

  block = tl.AttentionInflationBlock(heads=4, text_conditioning=False)
  video = jax.random.normal(jax.random.key(2), (1, 4, 3, 3, 32))
  block_params = trained_weights.perturbed(
      block.init(jax.random.key(1), video)["params"], seed=5, scale=1.0)
  out = block.apply({"params": block_params}, video)
  poked = block.apply({"params": block_params}, video.at[0, 0, 1, 1].add(1.0))
  changed = np.abs(np.asarray(poked - out)).max(axis=-1)[0] > 1e-6  # [T, H, W]
  assert changed[:, 1, 1].all()  # every frame of the poked pixel
  assert changed.sum() == 4  # and nothing else


def test_pooled_level_attention_is_the_identity_at_init_and_then_spans_space_and_time():
  """model.temporal.attention_grid: the level attention blocks attend over every frame and
  cell of the level pooled to N x N. Identity at init; once trained, a change at one pixel
  of frame 0 moves every frame and every cell, and by the same amount at each pixel of a
  cell (the pooled cells' change is repeated back)."""
  config, params = _setup((True, True))
  _assert_new_group_unchanged_at_init(config, params, "level_attention",
                                      ["model.temporal.attention_levels=(0, 1)",
                                       "model.temporal.attention_grid=4"])
  block = tl.PooledSpaceTimeAttention(heads=4, grid=2)
  video = jax.random.normal(jax.random.key(2), (1, 3, 4, 4, 32))
  block_params = block.init(jax.random.key(1), video)["params"]
  np.testing.assert_array_equal(block.apply({"params": block_params}, video), video)
  block_params = trained_weights.perturbed(block_params, seed=5, scale=0.2)
  out = block.apply({"params": block_params}, video)
  # A poke that is not the same in every channel (the layer norm would remove that one).
  poke = jax.random.normal(jax.random.key(3), (32,))
  poked = block.apply({"params": block_params}, video.at[0, 0, 1, 1].add(poke))
  change = np.array(poked - out)[0]  # [T, H, W, C]
  change[0, 1, 1] -= np.asarray(poke)  # the poke itself
  assert (np.abs(change).max(axis=-1) > 1e-6).all()
  cells = change.reshape(3, 2, 2, 2, 2, 32)
  np.testing.assert_allclose(cells, np.broadcast_to(cells[:, :, :1, :, :1], cells.shape),
                             atol=1e-6)


@pytest.mark.parametrize("grid", ["3", "-1", "64"])
def test_bad_attention_grid_is_named(grid):
  with pytest.raises(ConfigError, match="attention_grid"):
    load_config("shapes_tiny:t2v", ["model.temporal.attention_levels=(0, 1)",
                                    f"model.temporal.attention_grid={grid}"])


@pytest.mark.parametrize("levels", ["(2,)", "(0, 0)", "(-1,)", "(0.5,)", "(True,)"])
def test_bad_attention_levels_are_named(levels):
  with pytest.raises(ConfigError, match="attention_levels"):
    load_config("shapes_tiny:t2v", [f"model.temporal.attention_levels={levels}"])


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
  bug would mix them). Run with trained-looking temporal weights: at init every
  inflation block is x + 0, and a bug inside one could not show."""
  config, params = _setup((True, True))
  temporal = trained_weights.perturbed(params["temporal"], seed=11)
  x, _ = _inputs(config)
  emb, mask = build.encode_text(config, params, ["a", "b"])
  stunet = build.build_denoiser(config.model)
  apply = jax.jit(lambda temporal, ts, v, e, m: stunet.apply(
      {"params": {"backbone": params["backbone"], "temporal": temporal}}, v, ts, e, m))
  both = apply(temporal, jnp.array([37.0, 811.0]), x, emb, mask)
  swapped = apply(temporal, jnp.array([811.0, 37.0]), x[::-1], emb[::-1], mask[::-1])
  np.testing.assert_allclose(both[::-1], swapped, atol=1e-5)
  # The temporal weights really act: every frame differs from the identity-initialised
  # model's, and a change to one video's input stays in that video.
  at_init = apply(params["temporal"], jnp.array([37.0, 811.0]), x, emb, mask)
  assert (np.abs(np.asarray(both - at_init)).max(axis=(0, 2, 3, 4)) > 1e-2).all()
  nudged = apply(temporal, jnp.array([37.0, 811.0]), x.at[1].multiply(-1.0), emb, mask)
  np.testing.assert_allclose(nudged[0], both[0], atol=1e-5)
  assert np.abs(np.asarray(nudged[1] - both[1])).max() > 1e-2


def _sinusoid(positions, dim):
  """The frame embedding written out: diffusers' timestep embedding with
  flip_sin_to_cos, i.e. [cos(p f_i), sin(p f_i)], f_i = 10000^(-i / (dim / 2))."""
  freqs = np.exp(-np.log(10000.0) * np.arange(dim // 2) / (dim // 2))
  args = positions[:, None] * freqs[None]
  return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def _layer_norm(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = np.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _attention(p, x, context, heads):
  """Multi-head attention of one sequence x [S, C] to context [L, D], head by head."""
  q, k, v = (y @ p[name]["kernel"] for y, name in ((x, "to_q"), (context, "to_k"),
                                                    (context, "to_v")))
  d = q.shape[-1] // heads
  outs = []
  for head in range(heads):
    cols = slice(head * d, (head + 1) * d)
    logits = q[:, cols] @ k[:, cols].T / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    outs.append(weights / weights.sum(-1, keepdims=True) @ v[:, cols])
  return np.concatenate(outs, -1) @ p["to_out_0"]["kernel"] + p["to_out_0"]["bias"]


def _reference_temporal_attention_block(p, x, context, heads):
  """LUMIERE.md's attention inflation block, one pixel at a time: the sequence is that
  pixel's frames (plus frame embeddings); self-attention, cross-attention to the video's
  caption, output projection, residual."""
  b, t, hh, ww, c = x.shape
  out = np.empty_like(x)
  pos = _sinusoid(np.arange(t, dtype=np.float64), c)
  for i in range(b):
    for row in range(hh):
      for col in range(ww):
        seq = _layer_norm(x[i, :, row, col], p["norm1"]) + pos
        h = _attention(p["attn1"], seq, seq, heads)
        h = h + _attention(p["attn2"], _layer_norm(h, p["norm2"]), context[i], heads)
        out[i, :, row, col] = (x[i, :, row, col] + h @ p["proj_out"]["kernel"]
                               + p["proj_out"]["bias"])
  return out


def test_temporal_attention_block_with_trained_weights_matches_a_per_pixel_reference():
  """Every weight random and non-zero: attention over the wrong axis, a wrong transpose
  back, the wrong frame embedding or a cross-attention to another video's caption all
  change the output."""
  x = jax.random.normal(jax.random.key(3), (2, 4, 3, 3, 8))
  context = jax.random.normal(jax.random.key(4), (2, 5, 8))
  block = tl.AttentionInflationBlock(heads=2)
  init = nn.meta.unbox(jax.jit(block.init)(jax.random.key(0), x, context))
  params = trained_weights.perturbed(init["params"], seed=5, scale=0.3)
  out = np.asarray(jax.jit(block.apply)({"params": params}, x, context), np.float64)
  to64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
  expected = _reference_temporal_attention_block(to64(params), np.asarray(x, np.float64),
                                                 np.asarray(context, np.float64), heads=2)
  assert np.abs(expected - np.asarray(x)).max() > 0.1  # the block does something
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def _reference_temporal_conv(x, kernel, bias, stride):
  """y[:, j] = bias + sum_k x[:, stride j + k - K // 2] @ kernel[k], zero padding."""
  size = kernel.shape[0]
  frames = x.shape[1]
  out = []
  for j in range(0, frames, stride):
    y = np.broadcast_to(bias, x.shape[:1] + x.shape[2:-1] + bias.shape).copy()
    for k in range(size):
      source = j + k - size // 2
      if 0 <= source < frames:
        y += x[:, source] @ kernel[k]
    out.append(y)
  return np.stack(out, axis=1)


def _assert_same_value_and_gradients(module, plain, x):
  """module.apply and plain(params, x) agree in value and in both gradients."""
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), x))
  params = trained_weights.perturbed(params, seed=2, scale=0.5)
  results = []
  for fn in (module.apply, lambda p, x: plain(p["params"], x)):
    y, vjp = jax.vjp(fn, params, x)
    results.append((y, *vjp(jax.random.normal(jax.random.key(4), y.shape))))
  for got, want in zip(jax.tree_util.tree_leaves(results[0]),
                       jax.tree_util.tree_leaves(results[1])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride", [(1, 1), (3, 1), (3, 2)])
def test_conv2d_equals_the_plain_convolution_in_value_and_gradients(kernel_size, stride):
  # A 1x1 stride-1 Conv2D has matmul gradients of its own (layers.pointwise_conv).
  pad = kernel_size // 2

  def plain(p, x):
    return jax.lax.conv_general_dilated(
        x, p["kernel"], (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

  x = jax.random.normal(jax.random.key(3), (3, 6, 5, 4))
  _assert_same_value_and_gradients(layers.Conv2D(6, kernel_size, stride=stride), plain, x)


def test_dense_equals_the_plain_dot_in_value_and_gradients():
  # Dense runs its matmul on 2-D rows (layers.matmul_channels).
  x = jax.random.normal(jax.random.key(3), (2, 3, 6, 5, 4))
  _assert_same_value_and_gradients(layers.Dense(6),
                                   lambda p, x: jnp.dot(x, p["kernel"]) + p["bias"], x)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_temporal_conv_equals_the_3d_convolution_in_value_and_gradients(kernel_size, stride):
  # TemporalConv runs as a 2D convolution over (time, rows x columns) with a (k, 1)
  # kernel, and at stride 1 with its own gradients (time_conv: the kernel gradient one
  # matmul over the shifted output gradients); it must equal the 3D convolution with a
  # (k, 1, 1) kernel it replaces, in value and in both gradients (rows != columns, so a
  # wrong reshape shows; 5 taps over 6 frames, so a wrong shift or padding shows).
  pad = kernel_size // 2

  def conv3d(p, x):
    y = jax.lax.conv_general_dilated(
        x, p["kernel"][:, None, None], (stride, 1, 1), ((pad, pad), (0, 0), (0, 0)),
        dimension_numbers=("NTHWC", "THWIO", "NTHWC"))
    return y + p["bias"]

  x = jax.random.normal(jax.random.key(3), (2, 6, 3, 5, 4))
  _assert_same_value_and_gradients(tl.TemporalConv(6, kernel_size, stride=stride), conv3d, x)


class _FlatMatmulOps(nn.Module):
  """The three ops with matmul gradients of their own, in one chain."""

  @nn.compact
  def __call__(self, x):
    x = tl.TemporalConv(6, 3)(x)
    x = layers.Conv2D(5, 1)(x.reshape(-1, *x.shape[2:])).reshape(*x.shape[:-1], 5)
    return layers.Dense(4)(x)


def test_flat_matmul_gradients_only_where_no_axis_but_data_is_split():
  # The matmul gradients merge activation axes into rows, which GSPMD cannot keep split
  # where rows or tokens are (layers.flat_matmuls): in a mesh with devices on an axis
  # other than 'data' the plain ops run instead; along 'data' alone (a device per CPU
  # core) the merged rows keep the batch split. The same value and gradients each way.
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  module = _FlatMatmulOps()
  x = jax.random.normal(jax.random.key(3), (2, 6, 3, 5, 4))
  params = trained_weights.perturbed(nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), x)),
                                     seed=2, scale=0.5)
  loss = lambda p, x: jnp.square(module.apply(p, x)).sum()
  grad = jax.grad(loss, argnums=(0, 1))

  def traced(mesh):
    with sharding.activation_sharding(mesh, ()):
      return str(jax.make_jaxpr(grad)(params, x)), jax.jit(grad)(params, x)

  devices = np.asarray(jax.devices()[:2])
  meshes = {"one": jax.sharding.Mesh(devices[:1], ("data",)),
            "data": jax.sharding.Mesh(devices, ("data",)),
            "fsdp": jax.sharding.Mesh(devices.reshape(1, 2), ("data", "fsdp"))}
  runs = {name: traced(mesh) for name, mesh in meshes.items()}
  # Convolutions in the gradient program: each op's forward, input and kernel gradients
  # (6), against the two forwards and the temporal input gradient (3) where the kernel
  # gradients and the 1x1 input gradient are matmuls.
  assert runs["fsdp"][0].count("conv_general_dilated[") == 6
  assert runs["one"][0].count("conv_general_dilated[") == 3
  assert runs["data"][0].count("conv_general_dilated[") == 3
  assert str(jax.make_jaxpr(grad)(params, x)).count("conv_general_dilated[") == 3  # no mesh
  for name in ("data", "fsdp"):
    for got, want in zip(jax.tree_util.tree_leaves(runs[name][1]),
                         jax.tree_util.tree_leaves(runs["one"][1])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (3, 2), (5, 2)])
def test_temporal_conv_with_trained_weights_convolves_over_frames(kernel_size, stride):
  x = jax.random.normal(jax.random.key(6), (2, 6, 3, 2, 4))
  conv = tl.TemporalConv(4, kernel_size, stride=stride, identity_init=True)
  init = nn.meta.unbox(jax.jit(conv.init)(jax.random.key(0), x))
  params = trained_weights.perturbed(init, seed=7, scale=0.5)
  out = np.asarray(jax.jit(conv.apply)(params, x), np.float64)
  p = params["params"]
  expected = _reference_temporal_conv(np.asarray(x, np.float64),
                                      np.asarray(p["kernel"], np.float64),
                                      np.asarray(p["bias"], np.float64), stride)
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
