"""Building blocks with logical axis names on every parameter.

Parameter names follow diffusers (`kernel`/`bias` for `weight`/`bias`, `scale` for norm
weights), so that converted weights land by a mechanical rename. Normalisation statistics
and softmax are computed in float32 whatever the compute dtype.
"""

import functools
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = Tuple[Optional[str], ...]


def _logical(init, axes: Axes):
  return nn.with_logical_partitioning(init, axes)


def mask_to_bias(mask, dtype=jnp.float32):
  """Boolean keep-mask -> additive attention bias (0 or a large negative number)."""
  return jnp.where(mask, 0.0, jnp.finfo(dtype).min / 2).astype(dtype)


# The named scope of the exact 0/1 matmuls that move data (repeat_rows' derivative,
# GroupNorm's group sums): bench/flops.py leaves them out of the model's FLOPs.
SELECTION_SCOPE = "selection_matmul"


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def repeat_rows(v, n: int):
  """v [M, C] -> [n, C], row i = v[i // (n // M)] (jnp.repeat over axis 0), whose
  derivative is a matmul with a 0/1 matrix.

  Why: the gradient of a repeat or broadcast is a sum, and XLA merges it with the sum
  before it (the per-sample sum of an activation's gradient, [B, C]) into one sum of the
  whole activation into [C], which XLA:CPU runs as a single loop on one core (10-20 ms
  for a [32, 32, 32, 32] gradient on a 2-core AVX2 EPYC; benchmarks/RESULTS.md). Behind a
  matmul the per-sample sums stay (split across the cores), then one tiny matmul. The
  value is a plain repeat, so forward passes do not change; the derivative is exact (each
  output sums one product with 1, HIGHEST precision so also on TPU)."""
  if n % v.shape[0]:
    raise ValueError(f"repeat_rows: {n} rows is not a multiple of {v.shape[0]}")
  return jnp.repeat(v, n // v.shape[0], axis=0)


@repeat_rows.defjvp
def _repeat_rows_jvp(n, primals, tangents):
  (v,), (dv,) = primals, tangents
  m = v.shape[0]
  pick = (jnp.arange(n)[:, None] // (n // m) == jnp.arange(m)[None, :]).astype(dv.dtype)
  with jax.named_scope(SELECTION_SCOPE):
    return repeat_rows(v, n), jnp.dot(pick, dv, precision=jax.lax.Precision.HIGHEST)


# The per-sample sums are over at least this many rows: a video layout [B, T, ..., C] with
# B = 2 gave two rows, each a sum over a whole video in one loop (11 ms for a
# [2, 16, 32, 32, 32] gradient on one AVX2 core, benchmarks/RESULTS.md, stop 47).
PER_SAMPLE_MIN_ROWS = 16


def leading_rows(shape) -> int:
  """How many leading axes of `shape` [N, ..., C] make the rows of a per-sample sum: the
  first, then more (never the last two) until they hold PER_SAMPLE_MIN_ROWS rows."""
  axes, rows = 1, shape[0]
  while rows < PER_SAMPLE_MIN_ROWS and axes < len(shape) - 2:
    rows, axes = rows * shape[axes], axes + 1
  return axes


def per_sample(p, x):
  """p, a per-channel [C] or rows [M, C] with M dividing N, broadcast against x
  [N, ..., C] (repeat_rows: sample i reads row i // (N / M)), repeated over the leading
  axes that leading_rows picks, so that its gradient is summed per sample (or per frame
  of a video) first."""
  axes = leading_rows(x.shape)
  rows = repeat_rows(p if p.ndim == 2 else p[None], math.prod(x.shape[:axes]))
  return rows.reshape(x.shape[:axes] + (1,) * (x.ndim - axes - 1) + rows.shape[-1:])


# per_sample pays where each sample holds many positions (an image's pixels, a video's):
# for token arrays whose batch is pixels ([B H W, T, C]) the per-sample sum is nearly as
# large as the gradient itself, so it would only add a pass (RESULTS.md, stop 44).
PER_SAMPLE_MIN_POSITIONS = 64


def per_sample_pays(x) -> bool:
  return x.ndim >= 3 and math.prod(x.shape[1:-1]) >= PER_SAMPLE_MIN_POSITIONS


def flat_matmuls() -> bool:
  """Whether the op being traced may merge activation axes into 2-D matmul rows
  (matmul_channels, pointwise_conv, temporal.time_conv): outside a mesh, or in a mesh
  whose devices all lie along its 'data' axis. Merged rows have no sharding GSPMD can
  keep where the frames are whole but rows or tokens are split, and it gathers the
  activations: lumiere_base:t2v's layout went from 10.3 to 29.0 GiB per device with
  them (benchmarks/RESULTS.md, stop 55). Along 'data' alone the batch (or, for a batch
  that does not divide, the frames) is split, the leading axis of the merged rows, which
  GSPMD keeps split: the data parallelism of one CPU device per core
  (runtime.apply_cpu_devices). (Where neither divides and the rows take 'data', the
  values stay right and GSPMD gathers, as before.) Every partitioned program is traced
  inside `parallel.sharding.activation_sharding`."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or all(size == 1 for name, size in mesh.shape.items() if name != "data")


def matmul_channels(x, kernel):
  """x [..., C] @ kernel [C, F] -> [..., F], as one 2-D matmul of the rows [M, C] where
  flat_matmuls() allows, else as jnp.dot on x itself.

  The same sums as jnp.dot on x itself, but its weight gradient is then a 2-D dot that
  contracts the rows (x^T [C, M] @ dy [M, F]), which XLA:CPU runs as a matmul of a
  transposed operand; contracting the leading axes of an N-D x instead made XLA:CPU copy
  both operands into a transposed layout first (a [32, 32, 32, 64] -> 32 weight gradient
  7.5 -> 2.8 ms, benchmarks/RESULTS.md, stop 55)."""
  if not flat_matmuls():
    return jnp.dot(x, kernel)
  y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


@jax.custom_vjp
def _bias_summed_by_matmul(y, bias):
  return y + bias


def _bias_summed_by_matmul_fwd(y, bias):
  return y + bias, bias


def _bias_summed_by_matmul_bwd(bias, dy):
  """The bias gradient as ones [1, M] @ dy [M, C]: dy is needed whole anyway (the
  gradient of y), and a matmul reads it once. Written as a sum (per_sample's), XLA:CPU
  fuses the reduction with the elementwise chain that makes dy (a norm's backward) and
  computes the chain a second time inside it: the peer-matched train step's reductions
  took 42-50 ms per device on a 2-core AMD EPYC, 18-20 ms with the matmul
  (benchmarks/RESULTS.md, stop 63). The residual is the bias, for its dtype."""
  rows = dy.reshape(-1, dy.shape[-1])
  ones = jnp.ones((1, rows.shape[0]), dy.dtype)
  with jax.named_scope(SELECTION_SCOPE):  # a sum, not model FLOPs (bench/flops.py)
    total = jnp.dot(ones, rows, precision=jax.lax.Precision.HIGHEST,
                    preferred_element_type=jnp.float32)[0]
  return dy, total.astype(bias.dtype)


_bias_summed_by_matmul.defvjp(_bias_summed_by_matmul_fwd, _bias_summed_by_matmul_bwd)


def add_channel_bias(y, bias):
  """y [N, ..., C] + bias [C]. Where each sample holds many positions (per_sample_pays),
  the bias gradient is one matmul over the rows where flat_matmuls() allows, and
  per_sample sums elsewhere."""
  if not per_sample_pays(y):
    return y + bias
  if flat_matmuls():
    return _bias_summed_by_matmul(y, bias)
  return y + per_sample(bias, y)


class Dense(nn.Module):
  features: int
  axes: Axes = ("embed", "mlp")
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _logical(self.kernel_init, self.axes),
                        (x.shape[-1], self.features))
    y = matmul_channels(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", _logical(nn.initializers.zeros, self.axes[-1:]),
                        (self.features,))
      y = add_channel_bias(y, bias.astype(self.dtype))
    return y


def _conv2d(x, kernel, stride: int):
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def pointwise_conv(x, kernel):
  """A 1x1 convolution of stride 1, x [..., H, W, C] with kernel [1, 1, C, D]; its
  gradients are matmuls over the channels (matmul_channels). The forward stays a
  convolution: as a matmul it made the sampling step slower (benchmarks/RESULTS.md, stop
  55)."""
  return _conv2d(x, kernel, 1)


def _pointwise_forward(x, kernel):
  return _conv2d(x, kernel, 1), (x, kernel)


def _pointwise_backward(residuals, dy):
  x, kernel = residuals
  w = kernel[0, 0]
  dx = matmul_channels(dy, w.T.astype(dy.dtype)).astype(x.dtype)
  dw = jax.lax.dot_general(x.reshape(-1, w.shape[0]), dy.reshape(-1, w.shape[1]),
                           (((0,), (0,)), ((), ())))
  return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


pointwise_conv.defvjp(_pointwise_forward, _pointwise_backward)


class Conv2D(nn.Module):
  """NHWC convolution with explicit symmetric padding (torch semantics for stride 2)."""

  features: int
  kernel_size: int = 3
  stride: int = 1
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel",
                        _logical(self.kernel_init, ("conv_h", "conv_w", "conv_in", "conv_out")),
                        (k, k, x.shape[-1], self.features))
    bias = self.param("bias", _logical(nn.initializers.zeros, ("conv_out",)), (self.features,))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = (pointwise_conv(x, kernel) if k == 1 and self.stride == 1 and flat_matmuls()
         else _conv2d(x, kernel, self.stride))
    return add_channel_bias(y, bias.astype(self.dtype))


def _normalize(x, reduce_axes, epsilon):
  """Zero mean, unit variance over `reduce_axes`, in float32."""
  mean = x.mean(axis=reduce_axes, keepdims=True)
  var = jnp.square(x - mean).mean(axis=reduce_axes, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + epsilon)


def _rows_per_sample(v, n: int):
  """[M, C] -> [n, C], row i = v[i // (n // M)]."""
  return jnp.repeat(v, n // v.shape[0], axis=0)


def _group_sums(v, num_groups: int):
  """[B, C] -> [B, C]: each channel's sum over the channels of its group.

  The group sums [B, G] are spread back to the channels by a matmul with the 0/1 matrix
  of the groups, which gives exactly the sums (each output is one sum times 1 plus exact
  zeros) but, unlike a repeat, is not fused into the pass over the activation that reads
  the result: XLA:CPU emitted that pass as a scalar loop when it computed each element's
  group index itself with fewer channels per group than a vector holds (GroupNorm + SiLU
  of [32, 32, 32, 32] with 8 groups 1.8 -> 0.9 ms; benchmarks/RESULTS.md)."""
  b, c = v.shape
  sums = v.reshape(b, num_groups, c // num_groups).sum(-1)
  spread = jnp.repeat(jnp.eye(num_groups, dtype=v.dtype), c // num_groups, axis=1)
  with jax.named_scope(SELECTION_SCOPE):
    return jnp.dot(sums, spread, precision=jax.lax.Precision.HIGHEST)


def _group_norm_forward(x, scale, bias, modulation, num_groups, epsilon, silu):
  rows = x.astype(jnp.float32).reshape(x.shape[0], -1, x.shape[-1])
  count = rows.shape[1] * (rows.shape[-1] // num_groups)
  mean = _group_sums(rows.sum(axis=1), num_groups) / count
  centred = rows - mean[:, None]
  rstd = jax.lax.rsqrt(_group_sums(jnp.square(centred).sum(axis=1), num_groups) / count
                       + epsilon)
  y = centred * rstd[:, None] * scale + bias
  if modulation is not None:
    film_scale, film_shift = (_rows_per_sample(m.astype(jnp.float32), rows.shape[0])
                              for m in modulation)
    y = y * (1 + film_scale[:, None]) + film_shift[:, None]
  y = y.reshape(x.shape).astype(x.dtype)
  return (nn.silu(y) if silu else y), (x, mean, rstd, scale, bias, modulation)


def _group_norm_backward(num_groups, epsilon, silu, residuals, dy):
  """The gradient in two passes over the activation: the per-(sample, channel) sums of
  dy and dy x_hat, then dx = A dy + K x + K' with [B, C] coefficients."""
  del epsilon
  x, mean, rstd, scale, bias, modulation = residuals
  b, c = x.shape[0], x.shape[-1]
  rows = x.astype(jnp.float32).reshape(b, -1, c)
  count = rows.shape[1] * (c // num_groups)
  film, shift = 1.0, 0.0
  if modulation is not None:
    film = 1 + _rows_per_sample(modulation[0].astype(jnp.float32), b)
    shift = _rows_per_sample(modulation[1].astype(jnp.float32), b)
  a = scale * film                       # y = x_hat a + (bias film + shift)
  slope = rstd * a                       # [B, C]: y = rows slope + offset
  dy = dy.astype(jnp.float32).reshape(b, -1, c)
  if silu:
    z = rows * slope[:, None] + ((bias - mean * rstd * scale) * film + shift)[:, None]
    s = jax.nn.sigmoid(z)
    dy = dy * s * (1 + z * (1 - s))
  sum_dy = dy.sum(axis=1)
  sum_dy_xhat = ((rows - mean[:, None]) * dy).sum(axis=1) * rstd
  mean_dxhat = _group_sums(a * sum_dy, num_groups) / count
  mean_dxhat_xhat = _group_sums(a * sum_dy_xhat, num_groups) / count
  k_rows = -rstd * rstd * mean_dxhat_xhat
  k_const = -mean * k_rows - rstd * mean_dxhat
  dx = dy * slope[:, None] + rows * k_rows[:, None] + k_const[:, None]
  dscale = (sum_dy_xhat * film).sum(0).astype(scale.dtype)
  dbias = (sum_dy * film).sum(0).astype(bias.dtype)
  dmodulation = None
  if modulation is not None:
    per_video = lambda v, like: v.reshape(like.shape[0], -1, c).sum(1).astype(like.dtype)
    dmodulation = (per_video(sum_dy_xhat * scale + sum_dy * bias, modulation[0]),
                   per_video(sum_dy, modulation[1]))
  return dx.reshape(x.shape).astype(x.dtype), dscale, dbias, dmodulation


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def group_norm(x, scale, bias, modulation, num_groups: int, epsilon: float, silu: bool):
  """GroupNorm of x [B, ..., C] over its non-batch axes per group of channels, the affine
  (scale, bias [C]), an optional FiLM `modulation` (scale, shift), each [B', C] with B'
  dividing B (sample i reads row i // (B / B'); y (1 + scale) + shift), and SiLU when
  `silu`; in float32, the result in x's dtype (SiLU after that cast).

  The statistics are sums over the rows of x viewed as [B, N, C], grouped on the small
  [B, C] result (channels-minor column sums, which XLA:CPU emits as vector loops). The
  forward is the textbook one. The gradient is written out (a custom VJP): autodiff's
  spread over many fusions that each re-read the activation and recomputed the chain
  before them, where this one makes two passes (GroupNorm + FiLM + SiLU forward and all
  gradients of a [32, 32, 32, 32] activation about twice as fast on a 2-core AVX2 EPYC;
  benchmarks/RESULTS.md). Its parameter gradients are summed per sample first, on [B, C]."""
  return _group_norm_forward(x, scale, bias, modulation, num_groups, epsilon, silu)[0]


group_norm.defvjp(_group_norm_forward, _group_norm_backward)


class GroupNorm(nn.Module):
  """GroupNorm over the channel axis (last), statistics over all other non-batch axes
  (group_norm above; `silu` applies SiLU to the result).

  `modulation`: an optional FiLM (scale, shift), each [B', C] with B' dividing B (e.g. one
  per video of B = B' T frames): the output is y (1 + scale) + shift, computed in float32,
  sample i reading row i // (B / B')."""

  num_groups: int = 32
  epsilon: float = 1e-5
  silu: bool = False

  @nn.compact
  def __call__(self, x, modulation=None):
    c = x.shape[-1]
    scale = self.param("scale", _logical(nn.initializers.ones, ("norm",)), (c,))
    bias = self.param("bias", _logical(nn.initializers.zeros, ("norm",)), (c,))
    if modulation is not None:
      modulation = tuple(modulation)
      if x.shape[0] % modulation[0].shape[0]:
        raise ValueError(f"GroupNorm: {x.shape[0]} samples is not a multiple of the "
                         f"modulation's {modulation[0].shape[0]} rows")
    return group_norm(x, scale, bias, modulation, self.num_groups, self.epsilon, self.silu)


class LayerNorm(nn.Module):
  """LayerNorm over the channel axis (last); its affine per sample where that pays."""

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", _logical(nn.initializers.ones, ("norm",)), (c,))
    bias = self.param("bias", _logical(nn.initializers.zeros, ("norm",)), (c,))
    y = _normalize(x.astype(jnp.float32), -1, self.epsilon)
    if per_sample_pays(x):
      scale, bias = per_sample(scale, x), per_sample(bias, x)
    return (y * scale + bias).astype(x.dtype)


class Attention(nn.Module):
  """Multi-head attention named like diffusers' Attention (to_q/to_k/to_v/to_out_0).

  x: [N, S, C]; context: [B, L, Dc] (self-attention when None); bias broadcastable to
  [B, heads, S, L]. N may be a multiple of B (frames or pixels of B videos as batch): each
  token attends to its own video's context, so x is viewed as [B, N/B * S, C], which is
  exact because cross-attention treats every query independently, and the context's keys
  and values are projected once per video rather than once per frame.
  """

  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32
  out_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x, context=None, bias=None, grid=None):
    """`grid` (T, H, W): the layout of each video's queries (frames, rows, columns, in
    that order); given, a cross-attention's head-mean weights [B, T, H, W, L] are sown
    as intermediates 'cross_attention' when that collection is mutable (the grounding
    loss, train/grounding.py), and nothing is computed otherwise."""
    shape = x.shape
    capture = (grid is not None and context is not None
               and self.is_mutable_collection("intermediates"))
    if context is not None and context.shape[0] != shape[0]:
      x = x.reshape(context.shape[0], -1, shape[-1])
    inner = self.heads * self.dim_head
    context = x if context is None else context
    proj = lambda name, y: Dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype,
                                 name=name)(y)
    split = lambda y: y.reshape(*y.shape[:-1], self.heads, self.dim_head)
    q, k, v = split(proj("to_q", x)), split(proj("to_k", context)), split(proj("to_v", context))
    logits = jnp.einsum("nshd,nlhd->nhsl", q, k).astype(jnp.float32) * self.dim_head ** -0.5
    if bias is not None:
      logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1)
    if capture:
      self.sow("intermediates", "cross_attention",
               probs.mean(axis=1).reshape(probs.shape[0], *grid, probs.shape[-1]))
    weights = probs.astype(self.dtype)
    out = jnp.einsum("nhsl,nlhd->nshd", weights, v).reshape(*x.shape[:-1], inner)
    out = Dense(shape[-1], ("heads", "embed"), dtype=self.dtype, kernel_init=self.out_init,
                name="to_out_0")(out)
    return out.reshape(shape)


def sinusoidal_embedding(timesteps, dim: int, flip_sin_to_cos: bool = True,
                         freq_shift: float = 0.0, max_period: float = 10000.0):
  """diffusers' get_timestep_embedding: [N] -> [N, dim] (float32)."""
  half = dim // 2
  exponent = -jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb

