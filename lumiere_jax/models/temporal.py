"""Temporal layers that inflate the frozen T2I backbone into a Space-Time U-Net.

All of them act on videos [B, T, H, W, C] and start as exact identities, per LUMIERE.md:
  * temporal down-sampling: a 1D temporal convolution initialised to identity, then
    stride 2 (output frame k is input frame 2k);
  * temporal up-sampling: frame duplication, then a 1D temporal convolution initialised
    to identity (no halved last frame, no amplitude change);
  * inflation blocks end in a zero-initialised projection added residually, so they are
    the identity at init: convolution-based ((2+1)D conv) at every level but the coarsest,
    attention-based (temporal self-attention, stackable) at the coarsest.

Text reaches the temporal layers, where enabled, through cross-attention in the attention
blocks and (extensions, off in the paper's layout) a FiLM of the conv blocks by the
pooled caption embedding and, per position, by what each (frame, row, column) reads of the
caption (LocalFiLM), both zero-initialised so they change nothing at init.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lumiere_jax.models import layers
from lumiere_jax.parallel import sharding

VIDEO_AXES = ("batch", "time", "height", "width", "embed")
SEQUENCE_AXES = ("batch", "length", "embed")  # attention sequences [N, S, C]


def identity_temporal_kernel(key, shape, dtype=jnp.float32):
  """[K, C, C] kernel whose centre tap is the identity matrix: conv(x) == x."""
  del key
  k, c_in, c_out = shape
  if c_in != c_out:
    raise ValueError(f"an identity temporal kernel needs c_in == c_out, got {shape}")
  return jnp.zeros(shape, dtype).at[k // 2].set(jnp.eye(c_in, dtype=dtype))


def _time_conv(x, kernel, stride: int):
  """x [B, T, N, C] * kernel [K, C, D] over T (zero padding K // 2) -> [B, T', N, D], in
  x's dtype."""
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel[:, None].astype(x.dtype), (stride, 1),
                                      ((pad, pad), (0, 0)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def time_conv(x, kernel):
  """_time_conv at stride 1 with an odd number of taps, its kernel gradient one matmul of
  x's rows with the K shifts of the output gradient side by side: dW_k = sum_t x[t]^T
  dy[t + K // 2 - k], x^T [C, M] @ [dy_0 .. dy_K-1] [M, K D]. XLA:CPU otherwise runs that gradient as a
  convolution whose batch is C, after copying x into a [C, T, N, B] layout (B minor), the
  slowest copies of the train step (benchmarks/RESULTS.md, stop 55)."""
  return _time_conv(x, kernel, 1)


def _time_conv_forward(x, kernel):
  return _time_conv(x, kernel, 1), (x, kernel)


def _time_conv_backward(residuals, dy):
  x, kernel = residuals
  k, c, d = kernel.shape
  pad, t = k // 2, x.shape[1]
  # dx[t] = sum_k dy[t + K // 2 - k] W_k^T: the same convolution of dy with the taps
  # reversed and each transposed (K odd: the padding is symmetric).
  dx = _time_conv(dy, jnp.flip(kernel, 0).transpose(0, 2, 1), 1).astype(x.dtype)
  padded = jnp.pad(dy, ((0, 0), (pad, pad), (0, 0), (0, 0)))
  shifts = jnp.concatenate([padded[:, 2 * pad - j:2 * pad - j + t] for j in range(k)], -1)
  dw = jax.lax.dot_general(x.reshape(-1, c), shifts.reshape(-1, k * d),
                           (((0,), (0,)), ((), ())))
  return dx, dw.reshape(c, k, d).transpose(1, 0, 2).astype(kernel.dtype)


time_conv.defvjp(_time_conv_forward, _time_conv_backward)


class TemporalConv(nn.Module):
  """1D convolution over the time axis of [B, T, H, W, C], zero padding, optional stride."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  identity_init: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = identity_temporal_kernel if self.identity_init else nn.initializers.lecun_normal()
    kernel = self.param("kernel",
                        nn.with_logical_partitioning(init, ("conv_t", "conv_in", "conv_out")),
                        (self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ("conv_out",)), (self.features,))
    # A 2D convolution over (time, rows x columns) with a (k, 1) kernel: the same sums as
    # the 3D convolution with a (k, 1, 1) kernel, but XLA:CPU runs 3D convolutions and
    # their gradients 3x slower than 2D ones (benchmarks/RESULTS.md, stop 45).
    b, t, h, w, c = x.shape
    x = x.astype(self.dtype).reshape(b, t, h * w, c)
    y = (time_conv(x, kernel.astype(self.dtype))
         if self.stride == 1 and self.kernel_size % 2 and layers.flat_matmuls()
         else _time_conv(x, kernel, self.stride))
    y = y.reshape(b, y.shape[1], h, w, self.features)
    return layers.add_channel_bias(y, bias.astype(self.dtype))


class TemporalDownsample(nn.Module):
  """Identity-initialised temporal conv, then stride 2: T -> T / 2."""

  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return TemporalConv(x.shape[-1], self.kernel_size, stride=2, identity_init=True,
                        dtype=self.dtype, name="conv")(x)


class TemporalUpsample(nn.Module):
  """Frame duplication, then an identity-initialised temporal conv: T -> 2T."""

  kernel_size: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(x, 2, axis=1)
    return TemporalConv(x.shape[-1], self.kernel_size, identity_init=True, dtype=self.dtype,
                        name="conv")(x)


def pooled_text(context, context_mask):
  """Mean of the caption embedding over its valid tokens: [B, L, D], [B, L] -> [B, D]."""
  weights = context_mask.astype(context.dtype)[..., None]
  return jnp.sum(context * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class ConvInflationBlock(nn.Module):
  """Factorised space-time convolution: norm, SiLU, 3x3 spatial conv, norm, SiLU, temporal
  conv, then a zero-initialised linear projection added to the input.

  With `text_conditioning`, the second norm's output is modulated by the pooled caption,
  h * (1 + scale) + shift (FiLM), scale and shift from a zero-initialised projection: a
  per-clip signal ("moving left") that chooses what the (2+1)D convolution does; a caption
  pooled per position ([B, T, H, W, D], FiLMPool) gives the same projection per position.
  `local` ([B, T, H, W, 2 C], a LocalFiLM's output) adds a per-position scale and shift."""

  groups: int
  kernel_size: int = 3
  text_conditioning: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text=None, local=None):
    b, t, hh, ww, c = x.shape
    frames = x.reshape(b * t, hh, ww, c)
    h = layers.GroupNorm(num_groups=self.groups, silu=True, name="norm1")(frames)
    h = layers.Conv2D(c, dtype=self.dtype, name="spatial_conv")(h).reshape(b, t, hh, ww, c)
    film, per_position = None, []
    if self.text_conditioning:
      film = layers.Dense(2 * c, ("embed", "mlp"), dtype=self.dtype,
                          kernel_init=nn.initializers.zeros, name="text_film")(text)
      if text.ndim == 2:  # the pooled caption: one FiLM per clip, folded into the norm
        film = jnp.split(film, 2, axis=-1)
      else:  # a caption pooled per position (FiLMPool): [B, T, H, W, 2 C]
        per_position.append(film)
        film = None
    if local is not None:
      per_position.append(local)
    h = layers.GroupNorm(num_groups=self.groups, silu=not per_position, name="norm2")(h, film)
    if per_position:
      for modulation in per_position:
        scale, shift = jnp.split(modulation.astype(h.dtype), 2, axis=-1)
        h = h * (1 + scale) + shift
      h = nn.silu(h)
    h = TemporalConv(c, self.kernel_size, dtype=self.dtype, name="temporal_conv")(h)
    h = layers.Dense(c, ("conv_in", "conv_out"), dtype=self.dtype,
                     kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return x + h.astype(x.dtype)


class LocalFiLM(nn.Module):
  """A per-position FiLM of a conv inflation block: every (frame, row, column) of the
  block's input cross-attends to the caption, and a zero-initialised projection of what it
  reads gives that position's scale and shift ([B, T, H, W, C] -> [B, T, H, W, 2 C]).

  An extension (model.temporal.local_film): the pooled caption gives both objects of "a red
  circle moving left and a blue square moving up" one FiLM, the mean of two motions; here
  the red object's pixels can read the motion bound to "red"."""

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias):
    b, t, hh, ww, c = x.shape
    q = layers.LayerNorm(name="norm")(x).reshape(b, t * hh * ww, c)
    sequences = lambda y: sharding.constrain(y, SEQUENCE_AXES)
    read = sequences(layers.Attention(self.heads, c // self.heads, dtype=self.dtype,
                                      name="attn")(sequences(q), context, context_bias,
                                                   (t, hh, ww)))
    film = layers.Dense(2 * c, ("embed", "mlp"), dtype=self.dtype,
                        kernel_init=nn.initializers.zeros, name="proj")(read)
    return film.reshape(b, t, hh, ww, 2 * c)


class FiLMPool(nn.Module):
  """The caption pooled per position for a conv inflation block's FiLM: every (frame, row,
  column) of the block's input weighs the caption's tokens by an attention of its own
  (query from the position, key from the token) and takes their weighted mean
  ([B, T, H, W, C] -> [B, T, H, W, D]). The query projection starts at zero, so every
  weight is 1 / (valid tokens) and the pool is exactly the pooled caption: a trained model
  is unchanged at init. An extension (model.temporal.film_pooling="attention"): the mean
  over "a red circle moving left and a blue square moving up" gives both objects the
  mean of two motions, and the conv blocks' FiLM is where the STUNet reads motion (docs/
  learning_record.md, "Stop 50"); trained with the grounding loss (train/grounding.py),
  the red object's positions pool the red object's words."""

  heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias):
    b, t, hh, ww, c = x.shape
    dim = c // self.heads
    q = layers.Dense(self.heads * dim, ("embed", "heads"), use_bias=False, dtype=self.dtype,
                     kernel_init=nn.initializers.zeros, name="to_q")(
        layers.LayerNorm(name="norm")(x).reshape(b, t * hh * ww, c))
    k = layers.Dense(self.heads * dim, ("embed", "heads"), use_bias=False, dtype=self.dtype,
                     name="to_k")(context)
    split = lambda y: y.reshape(*y.shape[:-1], self.heads, dim)
    logits = jnp.einsum("nshd,nlhd->nhsl", split(q), split(k)).astype(jnp.float32)
    weights = jax.nn.softmax(logits * dim ** -0.5 + context_bias, axis=-1).mean(axis=1)
    if self.is_mutable_collection("intermediates"):
      self.sow("intermediates", "cross_attention", weights.reshape(b, t, hh, ww, -1))
    pooled = jnp.einsum("nsl,nld->nsd", weights.astype(self.dtype), context.astype(self.dtype))
    return pooled.reshape(b, t, hh, ww, context.shape[-1])


def spacetime_position_embedding(t: int, hh: int, ww: int, c: int):
  """[T, H, W, C] sinusoidal embedding of (frame, row, column) on disjoint channel groups:
  the frame on the first C - 2 * (C // 4) channels, the row and the column on C // 4 each."""
  cs = c // 4
  ct = c - 2 * cs
  grid = jnp.meshgrid(jnp.arange(t), jnp.arange(hh), jnp.arange(ww), indexing="ij")
  parts = [layers.sinusoidal_embedding(axis.reshape(-1), dim, max_period=period)
           for axis, dim, period in zip(grid, (ct, cs, cs), (10000.0, 100.0, 100.0))]
  return jnp.concatenate(parts, axis=-1).reshape(t, hh, ww, c)


class AttentionInflationBlock(nn.Module):
  """Temporal self-attention at each pixel (sequence = frames), optionally followed by
  cross-attention to the text, then a zero-initialised projection added to the input.

  With `spacetime`, the sequence is instead every (frame, row, column) token of the clip,
  with sinusoidal frame, row and column embeddings: an extension, not in the paper, which
  lets attention see where an object is and move it ("moving left" is a function of
  position and frame). Same parameters; identity at init either way."""

  heads: int
  text_conditioning: bool = True
  spacetime: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, context_bias=None):
    b, t, hh, ww, c = x.shape
    if self.spacetime:
      pos = spacetime_position_embedding(t, hh, ww, c).astype(self.dtype)
      h = (layers.LayerNorm(name="norm1")(x) + pos[None]).reshape(b, t * hh * ww, c)
    else:
      pos = layers.sinusoidal_embedding(jnp.arange(t), c).astype(self.dtype)
      h = layers.LayerNorm(name="norm1")(x) + pos[None, :, None, None]
      h = h.transpose(0, 2, 3, 1, 4).reshape(b * hh * ww, t, c)  # sequences over time
    # The sequences stay batch-sharded, as in unet2d.Transformer2D: left to itself, XLA's
    # SPMD partitioner (jax 0.10.2, CPU) reshards them over 'tensor' and miscompiles the
    # residual add of a (data, fsdp)-sharded batch (tests/test_sharding.py).
    sequences = lambda y: sharding.constrain(y, SEQUENCE_AXES)
    h = sequences(layers.Attention(self.heads, c // self.heads, dtype=self.dtype,
                                   name="attn1")(sequences(h)))
    if self.text_conditioning:
      h = sequences(h + layers.Attention(self.heads, c // self.heads, dtype=self.dtype,
                                         name="attn2")(
          layers.LayerNorm(name="norm2")(h), context, context_bias,
          (t, hh, ww) if self.spacetime else None))
    h = layers.Dense(c, ("mlp", "embed"), dtype=self.dtype,
                     kernel_init=nn.initializers.zeros, name="proj_out")(h)
    if self.spacetime:
      h = h.reshape(b, t, hh, ww, c)
    else:
      h = h.reshape(b, hh, ww, t, c).transpose(0, 3, 1, 2, 4)
    return x + h.astype(x.dtype)


class PooledSpaceTimeAttention(nn.Module):
  """Space-time self-attention over a video [B, T, H, W, C] average-pooled to a
  `grid` x `grid` grid: AttentionInflationBlock(spacetime=True, no text) on the pooled
  cells, whose change to them is repeated back over each cell's pixels and added to the
  input. Every cell of every frame reads every other, so a fine level can see an object
  across the whole clip; identity at init (the block's zero-initialised projection)."""

  heads: int
  grid: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, hh, ww, c = x.shape
    ph, pw = hh // self.grid, ww // self.grid
    pooled = x.reshape(b, t, self.grid, ph, self.grid, pw, c).mean(axis=(3, 5))
    change = AttentionInflationBlock(self.heads, False, True, dtype=self.dtype,
                                     name="attention")(pooled) - pooled
    change = jnp.repeat(jnp.repeat(change, ph, axis=2), pw, axis=3)
    return x + change.astype(x.dtype)
