"""The lumiere-pytorch peer's STUNet, rebuilt in Flax for a like-for-like benchmark.

  python benchmarks/peer/peer_unet.py --json /tmp/peer_matched.json --steps 7 --warmup 3
  python benchmarks/peer/peer_unet.py --dtype bfloat16    # mixed precision
  LUMIERE_CPU_DEVICES=cores python benchmarks/peer/peer_unet.py   # a device per core

times full training, frozen-base training and the sampling forward (16x32x32x3, width 32,
mults 1,2,4, batch 2, float32) and prints the table `lumiere bench` prints; compare.py
beside it runs this and the peer side by side. Kept out of the package: it exists only
to be compared with the peer.

The peer (shared/bench/lumiere_pytorch_peer.py) is a DDPM-style 2D U-Net that
lumiere-pytorch 0.0.24's `Lumiere` wrapper inflates with temporal modules run from forward
hooks. This module builds the same network, block for block and width for width, with the
same parameter count:

2D base (params['base']), frames as batch [B*T, H, W, C], dims = [dim] + dim * mults:
  time: sinusoidal(dim) -> Dense(4 dim) -> GELU -> Dense(4 dim)
  init conv 3x3 (C -> dim)
  down level i, (din, dout) = (dims[i], dims[i+1]): ResBlock(din -> din) x 2, each output
    a skip; conv 3x3 stride 2 (din -> dout), stride 1 at the last level
  mid: ResBlock(D), spatial self-attention (GroupNorm, heads x dim_head, residual),
    ResBlock(D)
  up level (reversed): ResBlock(dout + din -> dout) x 2 on concat(x, skip); nearest x2 +
    conv 3x3 (dout -> din), a plain conv 3x3 at the last level
  final: ResBlock(2 dim -> dim) on concat(x, init conv output), conv 1x1 (dim -> C)
  ResBlock: GroupNorm(8), SiLU, conv 3x3, FiLM (scale, shift) from the time embedding,
    SiLU, conv 3x3, plus a 1x1 conv shortcut where the width changes.

Temporal layers (params['temporal']), as lumiere-pytorch 0.0.24 builds them:
  ConvolutionInflationBlock after block2 of every level (down and up) and after both mid
    ResBlocks: conv 3x3 -> RMS-norm -> SiLU, temporal conv (3 taps) -> RMS-norm -> SiLU,
    zero-initialised 1x1 projection, residual.
  AttentionInflationBlock after the mid attention: x + proj(h), h = x + attention over
    time (pre RMS-norm, bias-free projections), proj zero-initialised.
  TemporalDownsample after every non-last spatial down-sampling (conv 3 taps, stride 2);
  TemporalUpsample after every non-last spatial up-sampling (transposed conv, 3 taps,
    stride 2), so frames go 16 -> 8 -> 4 at three levels.

Two of lumiere-pytorch's details are kept because they change what is computed:
  * its channel RMS-norm in the convolution block is `F.normalize(x, dim=-1)` on a
    channels-first tensor, so it normalises over the last axis of the peer's layout (the
    image width after the spatial conv, time after the temporal conv), not over channels;
  * its time embedding is repeated to every frame by a pre-forward hook. Here it is
    computed once per video and broadcast (the same values; the peer's extra rows are
    under 0.1% of its FLOPs).
Weights are initialised the usual Flax way (lecun-normal), the zero-initialised
projections and norm gains as in the peer; the temporal down-sampling starts as the
identity (temporal.TemporalConv) where the peer uses a [0.5, 1, 0.5] kernel, which does
not change what is computed.

FLOPs: `flop_count` counts matmul work (convolutions, projections, attention einsums, a
multiply-add = 2) with lumiere_jax/bench/flops.py's gradient rules, for the train step (all
parameters trained), the frozen-base train step (temporal parameters only) and the
sampling forward, in two conventions: the conv taps that read input (XLA's; tests hold it
equal to `flops.traced_flops` of the jitted programs), and every tap, padding included
(torch's FlopCounterMode, the peer's; within 0.1% of the peer's own count).
"""

import argparse
import dataclasses
import functools
import json
import math
import sys
from typing import Any, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from lumiere_jax import runtime
from lumiere_jax.bench import flops as flops_lib
from lumiere_jax.bench import report
from lumiere_jax.bench import timing
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.models import layers
from lumiere_jax.models import temporal as temporal_lib

BASE, TEMPORAL = "base", "temporal"


@dataclasses.dataclass(frozen=True)
class PeerSpec:
  """The peer's fixed benchmark config (its command-line defaults)."""

  frames: int = 16
  size: int = 32
  channels: int = 3
  dim: int = 32
  dim_mults: Tuple[int, ...] = (1, 2, 4)
  heads: int = 4
  dim_head: int = 32
  groups: int = 8
  batch: int = 2
  sample_batch: int = 2
  temporal_down: bool = True
  # The compute dtype of convolutions, projections and attention ("bfloat16": mixed
  # precision as torch.autocast does it: float32 parameters, optimizer, norms, softmax
  # and loss).
  dtype: str = "float32"

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def dims(self) -> Tuple[int, ...]:
    return (self.dim,) + tuple(self.dim * m for m in self.dim_mults)

  @property
  def levels(self) -> int:
    return len(self.dim_mults)

  @property
  def level_pairs(self):
    """(din, dout) of each down level, finest first."""
    return tuple(zip(self.dims[:-1], self.dims[1:]))


# -- small pieces ------------------------------------------------------------------------

def _scaled_rms_forward(x, gain, axis, silu):
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  y = x / jnp.maximum(norm, 1e-12) * (math.sqrt(x.shape[-1]) * gain)
  return (nn.silu(y) if silu else y), (x, gain, norm)


def _scaled_rms_backward(axis, silu, residuals, dy):
  x, gain, norm = residuals
  safe = jnp.maximum(norm, 1e-12)
  unit = x / safe
  g = math.sqrt(x.shape[-1]) * gain
  if silu:
    z = unit * g
    s = jax.nn.sigmoid(z)
    dy = dy * s * (1 + z * (1 - s))
  du = dy * g
  along = jnp.where(norm > 1e-12, jnp.sum(du * unit, axis=axis, keepdims=True), 0.0)
  dx = (du - unit * along) / safe
  # The gain's gradient, sum(dy * unit) over every position, as the diagonal of the
  # [C, C] matmul dy^T unit: XLA:CPU folds any written-out sum of the product into one
  # reduction to [C] fused with the SiLU derivative, 2.4x slower on one core of the Xeon
  # at [16, 32, 32, 32] (5.9 against 2.5 ms; benchmarks/RESULTS.md, stop 62).
  c = x.shape[-1]
  gram = jax.lax.dot_general(dy.reshape(-1, c), unit.reshape(-1, c), (((0,), (0,)), ((), ())))
  return dx, math.sqrt(c) * jnp.diagonal(gram)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def scaled_rms_norm(x, gain, axis: int, silu: bool):
  """normalize(x, axis) * sqrt(C) * gain[C] (lumiere-pytorch / x-transformers RMS-norm,
  torch's F.normalize: x / max(||x||_2 over axis, 1e-12)), then SiLU when `silu`. Its
  gradient is written out, as for layers.group_norm: the pass over the activation for the
  per-sample sums, one for dx."""
  return _scaled_rms_forward(x, gain, axis, silu)[0]


scaled_rms_norm.defvjp(_scaled_rms_forward, _scaled_rms_backward)


class ScaledRMSNorm(nn.Module):
  """lumiere-pytorch / x-transformers RMS-norm: normalize(x, axis) * sqrt(C) * gain[C],
  the gain per channel (the last axis here) whichever axis the statistics span; SiLU after
  it when `silu`."""

  axis: int = -1
  silu: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gain = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      (c,))
    y = scaled_rms_norm(x.astype(jnp.float32), gain, self.axis, self.silu)
    return y.astype(x.dtype)


def attention_core(q, k, v, heads: int):
  """softmax(q k^T / sqrt(d)) v over [N, S, heads * d] tokens, softmax in float32."""
  split = lambda y: y.reshape(*y.shape[:-1], heads, y.shape[-1] // heads)
  q, k, v = split(q), split(k), split(v)
  logits = jnp.einsum("nshd,nlhd->nhsl", q, k).astype(jnp.float32) * q.shape[-1] ** -0.5
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("nhsl,nlhd->nshd", weights, v)
  return out.reshape(*out.shape[:-2], -1)


# -- the 2D base -------------------------------------------------------------------------

class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv, FiLM from the time embedding, GroupNorm-FiLM-SiLU-conv, plus a
  1x1 shortcut where the width changes. x [B*T, H, W, Cin], temb [B, 4 dim]."""

  out_channels: int
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    c, dt = self.out_channels, self.dtype
    h = layers.Conv2D(c, dtype=dt, name="conv1")(layers.GroupNorm(num_groups=self.groups, silu=True,
                                                        name="norm1")(x))
    film = layers.Dense(2 * c, ("embed", "conv_out"), name="time_mlp")(nn.silu(temb))
    h = layers.GroupNorm(num_groups=self.groups, silu=True, name="norm2")(
        h, (film[:, :c], film[:, c:]))
    h = layers.Conv2D(c, dtype=dt, name="conv2")(h)
    if x.shape[-1] != c:
      x = layers.Conv2D(c, kernel_size=1, dtype=dt, name="skip")(x)
    return h + x


class SpatialAttention(nn.Module):
  """x + attention over the H*W tokens of each frame (GroupNorm first)."""

  heads: int
  dim_head: int
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, hh, ww, c = x.shape
    h = layers.GroupNorm(num_groups=self.groups, name="norm")(x).reshape(n, hh * ww, c)
    h = layers.Attention(self.heads, self.dim_head, dtype=self.dtype, name="attn")(h)
    return x + h.reshape(x.shape)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then conv 3x3."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return layers.Conv2D(self.features, dtype=self.dtype, name="conv")(x)


class TimeEmbedding(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, time):
    emb = layers.sinusoidal_embedding(time, self.dim, flip_sin_to_cos=False, freq_shift=1.0)
    emb = layers.Dense(4 * self.dim, ("embed", "mlp"), name="linear_1")(emb)
    return layers.Dense(4 * self.dim, ("mlp", "embed"),
                        name="linear_2")(nn.gelu(emb, approximate=False))


class DownLevel(nn.Module):
  spec: PeerSpec
  level: int

  def setup(self):
    s = self.spec
    din, dout = s.level_pairs[self.level]
    self.block1 = ResBlock(din, s.groups, s.compute_dtype)
    self.block2 = ResBlock(din, s.groups, s.compute_dtype)
    last = self.level == s.levels - 1
    self.resample = layers.Conv2D(dout, stride=1 if last else 2, dtype=s.compute_dtype)


class UpLevel(nn.Module):
  """Up level k (k = 0 is the coarsest)."""

  spec: PeerSpec
  k: int

  def setup(self):
    s = self.spec
    din, dout = s.level_pairs[s.levels - 1 - self.k]
    self.block1 = ResBlock(dout, s.groups, s.compute_dtype)
    self.block2 = ResBlock(dout, s.groups, s.compute_dtype)
    last = self.k == s.levels - 1
    self.resample = (layers.Conv2D(din, dtype=s.compute_dtype) if last
                     else Upsample(din, s.compute_dtype))


class MidLevel(nn.Module):
  spec: PeerSpec

  def setup(self):
    s = self.spec
    self.block1 = ResBlock(s.dims[-1], s.groups, s.compute_dtype)
    self.attn = SpatialAttention(s.heads, s.dim_head, s.groups, s.compute_dtype)
    self.block2 = ResBlock(s.dims[-1], s.groups, s.compute_dtype)


class Base2D(nn.Module):
  """The peer's 2D U-Net as a container; `PeerSTUNet` runs its forward pass."""

  spec: PeerSpec

  def setup(self):
    s = self.spec
    self.time_embedding = TimeEmbedding(s.dim)
    self.init_conv = layers.Conv2D(s.dim, dtype=s.compute_dtype)
    self.downs = [DownLevel(s, i) for i in range(s.levels)]
    self.mid = MidLevel(s)
    self.ups = [UpLevel(s, k) for k in range(s.levels)]
    self.final_block = ResBlock(s.dim, s.groups, s.compute_dtype)
    self.final_conv = layers.Conv2D(s.channels, kernel_size=1, dtype=s.compute_dtype)


# -- temporal layers ---------------------------------------------------------------------

def to_video(frames, batch: int):
  return frames.reshape(batch, frames.shape[0] // batch, *frames.shape[1:])


def to_frames(video):
  return video.reshape(-1, *video.shape[2:])


class ConvInflation(nn.Module):
  """lumiere-pytorch's ConvolutionInflationBlock on frames [B*T, H, W, C]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, batch: int):
    c, dt = x.shape[-1], self.dtype
    h = layers.Conv2D(c, dtype=dt, name="spatial_conv")(x)
    h = ScaledRMSNorm(axis=2, silu=True, name="spatial_norm")(h)  # over width (see above)
    h = temporal_lib.TemporalConv(c, dtype=dt, name="temporal_conv")(to_video(h, batch))
    h = ScaledRMSNorm(axis=1, silu=True, name="temporal_norm")(h)  # over time
    h = layers.Dense(c, ("conv_in", "conv_out"), kernel_init=nn.initializers.zeros,
                     dtype=dt, name="proj_out")(h)
    return x + to_frames(h)


class AttentionInflation(nn.Module):
  """lumiere-pytorch's AttentionInflationBlock (depth 1): attention over each pixel's
  frames, pre RMS-norm, residual; then a zero-initialised projection, residual."""

  heads: int
  dim_head: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, batch: int):
    dt = self.dtype
    video = to_video(x, batch)
    b, t, hh, ww, c = video.shape
    seq = video.transpose(0, 2, 3, 1, 4).reshape(b * hh * ww, t, c)
    normed = ScaledRMSNorm(name="norm")(seq)
    inner = self.heads * self.dim_head
    proj = lambda name: layers.Dense(inner, ("embed", "heads"), use_bias=False, dtype=dt,
                                     name=name)(normed)
    out = attention_core(proj("to_q"), proj("to_k"), proj("to_v"), self.heads)
    h = seq + layers.Dense(c, ("heads", "embed"), use_bias=False, dtype=dt,
                           name="to_out")(out)
    h = layers.Dense(c, ("mlp", "embed"), kernel_init=nn.initializers.zeros, dtype=dt,
                     name="proj_out")(h)
    h = h.reshape(b, hh, ww, t, c).transpose(0, 3, 1, 2, 4)
    return x + to_frames(h)


def transposed_temporal_conv(video, kernel, bias):
  """torch ConvTranspose1d(kernel 3, stride 2, padding 1, output_padding 1) over the time
  axis of [B, T, H, W, C]: T -> 2T. kernel [3, Cin, Cout] (tap k of torch's weight[:, :,
  k]). Output frame 2m is x[m] W1; frame 2m+1 is x[m] W2 + x[m+1] W0 (x[T] = 0): one
  matmul of every frame with the three taps side by side, then the taps interleaved."""
  taps = jnp.einsum("bthwc,kcd->kbthwd", video, kernel.astype(video.dtype))
  even = taps[1]
  odd = taps[2] + jnp.pad(taps[0][:, 1:], ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))
  out = jnp.stack([even, odd], axis=2)
  return layers.add_channel_bias(out.reshape(out.shape[0], -1, *out.shape[3:]), bias)


class TemporalUpsample(nn.Module):
  """lumiere-pytorch's TemporalUpsample on frames [B*T, H, W, C] -> [B*2T, H, W, C]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, batch: int):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), ("conv_t", "conv_in", "conv_out")), (3, c, c))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ("conv_out",)), (c,))
    video = to_video(x, batch).astype(self.dtype)
    return to_frames(transposed_temporal_conv(video, kernel, bias.astype(self.dtype)))


class TemporalDownsample(nn.Module):
  """lumiere-pytorch's TemporalDownsample (conv 3 taps, stride 2) on frames."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, batch: int):
    conv = temporal_lib.TemporalConv(x.shape[-1], stride=2, identity_init=True,
                                     dtype=self.dtype, name="conv")
    return to_frames(conv(to_video(x, batch)))


class Temporal(nn.Module):
  """All temporal layers, keyed by the peer's hook points."""

  spec: PeerSpec

  def setup(self):
    s = self.spec
    dt = s.compute_dtype
    self.down_convs = [ConvInflation(dt) for _ in range(s.levels)]
    self.mid_convs = [ConvInflation(dt) for _ in range(2)]
    self.mid_attn = AttentionInflation(s.heads, s.dim_head, dt)
    self.up_convs = [ConvInflation(dt) for _ in range(s.levels)]
    resamples = s.levels - 1 if s.temporal_down else 0
    self.downsamples = [TemporalDownsample(dt) for _ in range(resamples)]
    self.upsamples = [TemporalUpsample(dt) for _ in range(resamples)]


class PeerSTUNet(nn.Module):
  """x [B, T, H, W, C], time [B] (0..1000) -> predicted noise [B, T, H, W, C]."""

  spec: PeerSpec

  def setup(self):
    self.base = Base2D(self.spec)
    self.temporal = Temporal(self.spec)

  def __call__(self, x, time):
    base, temporal, b = self.base, self.temporal, x.shape[0]
    temb = base.time_embedding(time)
    h = base.init_conv(x.reshape(-1, *x.shape[2:]))
    first, skips = h, []
    for i, level in enumerate(base.downs):
      h = level.block1(h, temb)
      skips.append(h)
      h = temporal.down_convs[i](level.block2(h, temb), b)
      skips.append(h)
      h = level.resample(h)
      if i < len(temporal.downsamples):
        h = temporal.downsamples[i](h, b)
    mid = base.mid
    h = temporal.mid_convs[0](mid.block1(h, temb), b)
    h = temporal.mid_attn(mid.attn(h), b)
    h = temporal.mid_convs[1](mid.block2(h, temb), b)
    for k, level in enumerate(base.ups):
      h = level.block1(jnp.concatenate([h, skips.pop()], axis=-1), temb)
      h = level.block2(jnp.concatenate([h, skips.pop()], axis=-1), temb)
      h = level.resample(temporal.up_convs[k](h, b))
      if k < len(temporal.upsamples):
        h = temporal.upsamples[k](h, b)
    h = base.final_block(jnp.concatenate([h, first], axis=-1), temb)
    return base.final_conv(h).reshape(x.shape).astype(jnp.float32)


# -- analytic FLOPs ----------------------------------------------------------------------

TAPS = ("valid", "all")


def flop_count(spec: PeerSpec, batch: int, trainable=(BASE, TEMPORAL),
               taps: str = "valid") -> flops_lib.FlopCount:
  """Matmul FLOPs of one PeerSTUNet call on `batch` videos; train-step costs follow the
  rules of lumiere_jax/bench/flops.py with `trainable` naming the groups that get gradients.

  taps="valid" counts the conv taps that land inside the input (XLA's convention, what
  `flops.traced_flops` reports); taps="all" counts every tap at every output position,
  padding included, which is how torch's FlopCounterMode counts the peer's convolutions.
  """
  if taps not in TAPS:
    raise ValueError(f"taps must be one of {TAPS}, got {taps!r}")
  return flops_lib.FlopCount(tuple(_Walk(spec, batch, set(trainable), taps).run()))


class _Walk:
  """Follows PeerSTUNet.__call__ recording every matmul-like op (see flops.py's _Walk)."""

  def __init__(self, spec: PeerSpec, batch: int, trainable: set, taps: str):
    self.spec, self.batch, self.taps = spec, batch, taps
    self.trainable = {BASE: BASE in trainable, TEMPORAL: TEMPORAL in trainable}
    self.ops = []

  def _record(self, group, kind, flops, *operand_grads, extra_train_flops=0):
    self.ops.append(flops_lib.Op(group, kind, flops, sum(bool(g) for g in operand_grads),
                                 extra_train_flops))

  def _taps(self, size, kernel, stride=1) -> int:
    if self.taps == "valid":
      return flops_lib.valid_taps(size, kernel, stride)
    return ((size + 2 * (kernel // 2) - kernel) // stride + 1) * kernel

  def normed(self, group, a: flops_lib.Act) -> flops_lib.Act:
    return dataclasses.replace(a, grad=a.grad or self.trainable[group])

  def rms_normed(self, a: flops_lib.Act) -> flops_lib.Act:
    """A ScaledRMSNorm (the temporal layers'): where its gain trains, its gradient is
    the diagonal of a [C, C] matmul over every position (_scaled_rms_backward), work
    that only the traced programs ("valid") count; the peer sums a product."""
    if self.taps == "valid" and self.trainable[TEMPORAL]:
      self._record(TEMPORAL, "norm", 0, extra_train_flops=2 * a.tokens * a.channels ** 2)
    return self.normed(TEMPORAL, a)

  def conv2d(self, group, a, out_channels, kernel=3, stride=1) -> flops_lib.Act:
    taps = self._taps(a.res, kernel, stride)
    self._record(group, "conv", 2 * a.frames * taps * taps * a.channels * out_channels,
                 a.grad, self.trainable[group])
    res = (a.res + 2 * (kernel // 2) - kernel) // stride + 1
    return flops_lib.Act(a.frames, res, out_channels, a.grad or self.trainable[group])

  def temporal_conv(self, a, stride=1) -> flops_lib.Act:
    per_video = a.frames // self.batch
    per_tap = 2 * self.batch * a.res * a.res * a.channels ** 2
    extra = (flops_lib.temporal_kernel_grad_extra(per_tap, per_video, 3, stride,
                                                  self.trainable[TEMPORAL])
             if self.taps == "valid" else 0)  # "all" counts every tap already
    self._record(TEMPORAL, "conv", per_tap * self._taps(per_video, 3, stride),
                 a.grad, self.trainable[TEMPORAL], extra_train_flops=extra)
    return flops_lib.Act(self.batch * (per_video // stride), a.res, a.channels,
                         a.grad or self.trainable[TEMPORAL])

  def dense(self, group, rows, in_features, out_features, input_grad) -> bool:
    self._record(group, "dense", 2 * rows * in_features * out_features, input_grad,
                 self.trainable[group])
    return input_grad or self.trainable[group]

  def attention(self, group, rows, tokens, width, x_grad) -> bool:
    """Self-attention of `rows` sequences of `tokens`: q, k, v projections, the two
    einsums, and the output projection."""
    inner = self.spec.heads * self.spec.dim_head
    qkv_grad = self.dense(group, rows * tokens, width, inner, x_grad)
    self.dense(group, rows * tokens, width, inner, x_grad)
    self.dense(group, rows * tokens, width, inner, x_grad)
    einsum = 2 * rows * tokens * tokens * inner
    self._record(group, "attention", einsum, qkv_grad, qkv_grad)  # q.k
    self._record(group, "attention", einsum, qkv_grad, qkv_grad)  # weights.v
    return self.dense(group, rows * tokens, inner, width, qkv_grad)

  def resblock(self, a, out_channels, temb_grad):
    h = self.conv2d(BASE, self.normed(BASE, a), out_channels)
    film_grad = self.dense(BASE, self.batch, 4 * self.spec.dim, 2 * out_channels, temb_grad)
    h = self.normed(BASE, dataclasses.replace(h, grad=h.grad or film_grad))
    h = self.conv2d(BASE, h, out_channels)
    shortcut = a if a.channels == out_channels else self.conv2d(BASE, a, out_channels, 1)
    return dataclasses.replace(h, grad=h.grad or shortcut.grad)

  def spatial_attention(self, a):
    grad = self.attention(BASE, a.frames, a.res * a.res, a.channels,
                          self.normed(BASE, a).grad)
    return dataclasses.replace(a, grad=a.grad or grad)

  def conv_inflation(self, a):
    h = self.rms_normed(self.conv2d(TEMPORAL, a, a.channels))
    h = self.rms_normed(self.temporal_conv(h))
    grad = self.dense(TEMPORAL, h.tokens, a.channels, a.channels, h.grad)
    return dataclasses.replace(a, grad=a.grad or grad)

  def attention_inflation(self, a):
    per_video = a.frames // self.batch
    grad = self.attention(TEMPORAL, self.batch * a.res * a.res, per_video, a.channels,
                          self.rms_normed(a).grad)
    grad = self.dense(TEMPORAL, a.tokens, a.channels, a.channels, grad or a.grad)
    return dataclasses.replace(a, grad=a.grad or grad)

  def temporal_upsample(self, a):
    """One matmul of every frame with the three taps: 2 x tokens x C x 3C."""
    self._record(TEMPORAL, "conv", 2 * a.tokens * a.channels * 3 * a.channels, a.grad,
                 self.trainable[TEMPORAL])
    return flops_lib.Act(2 * a.frames, a.res, a.channels, a.grad or self.trainable[TEMPORAL])

  def run(self):
    s, b = self.spec, self.batch
    temb_grad = self.dense(BASE, b, s.dim, 4 * s.dim, False)
    temb_grad = self.dense(BASE, b, 4 * s.dim, 4 * s.dim, temb_grad)
    h = self.conv2d(BASE, flops_lib.Act(b * s.frames, s.size, s.channels, False), s.dim)
    first, skips = h, []
    for i, (din, dout) in enumerate(s.level_pairs):
      h = self.resblock(h, din, temb_grad)
      skips.append(h)
      h = self.conv_inflation(self.resblock(h, din, temb_grad))
      skips.append(h)
      h = self.conv2d(BASE, h, dout, stride=1 if i == s.levels - 1 else 2)
      if s.temporal_down and i < s.levels - 1:
        h = self.temporal_conv(h, stride=2)
    h = self.conv_inflation(self.resblock(h, s.dims[-1], temb_grad))
    h = self.attention_inflation(self.spatial_attention(h))
    h = self.conv_inflation(self.resblock(h, s.dims[-1], temb_grad))
    for k, (din, dout) in enumerate(reversed(s.level_pairs)):
      for _ in range(2):
        skip = skips.pop()
        h = flops_lib.Act(h.frames, h.res, h.channels + skip.channels, h.grad or skip.grad)
        h = self.resblock(h, dout, temb_grad)
      h = self.conv_inflation(h)
      if k == s.levels - 1:
        h = self.conv2d(BASE, h, din)
      else:
        h = self.conv2d(BASE, dataclasses.replace(h, res=2 * h.res), din)
        if s.temporal_down:
          h = self.temporal_upsample(h)
    h = flops_lib.Act(h.frames, h.res, h.channels + first.channels, h.grad or first.grad)
    h = self.resblock(h, s.dim, temb_grad)
    self.conv2d(BASE, h, s.channels, kernel=1)
    return self.ops


# -- the benchmarked programs ------------------------------------------------------------

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, as the peer uses it
TIME_SCALE = 1000.0


class PeerState(flax.struct.PyTreeNode):
  """What a train step changes. `params` are the trained groups (both, or 'temporal'),
  `frozen` the rest: the step differentiates `params` only, so XLA computes no weight
  gradients for `frozen`, and AdamW keeps moments for `params` only."""

  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any


def make_optimizer() -> optax.GradientTransformation:
  """The peer's optimizer: AdamW(lr=1e-4) with torch's defaults (betas 0.9/0.999, eps
  1e-8, weight decay 0.01 on every parameter)."""
  return optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)


def video_shape(spec: PeerSpec, batch: int) -> tuple:
  return (batch, spec.frames, spec.size, spec.size, spec.channels)


def init_params(spec: PeerSpec, rng) -> dict:
  """{'base': ..., 'temporal': ...}, float32."""
  model = PeerSTUNet(spec)
  x = jnp.zeros(video_shape(spec, 1), jnp.float32)
  return nn.meta.unbox(model.init(rng, x, jnp.zeros((1,), jnp.float32))["params"])


def split(params: dict, trainable) -> tuple:
  """(trained groups, frozen groups) of a {'base', 'temporal'} tree."""
  return ({k: v for k, v in params.items() if k in trainable},
          {k: v for k, v in params.items() if k not in trainable})


def init_state(spec: PeerSpec, trainable, rng, optimizer) -> PeerState:
  params, frozen = split(init_params(spec, rng), trainable)
  return PeerState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                   opt_state=optimizer.init(params))


def diffusion_loss(model, params, x0, rng):
  """The peer's objective: t ~ U(0, 1), cosine schedule (alpha = cos(pi t / 2), sigma =
  sin(pi t / 2)), eps-prediction MSE; the model sees t * 1000."""
  noise_rng, t_rng = jax.random.split(rng)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  t = jax.random.uniform(t_rng, (x0.shape[0],), x0.dtype)
  expand = (slice(None),) + (None,) * (x0.ndim - 1)
  angle = (0.5 * jnp.pi * t)[expand]
  xt = jnp.cos(angle) * x0 + jnp.sin(angle) * noise
  pred = model.apply({"params": params}, xt, t * TIME_SCALE)
  return jnp.mean(jnp.square(pred - noise))


def train_step(state: PeerState, x0, rng, *, model, optimizer):
  """One AdamW update of the trained groups: (state, x0 [B, T, H, W, C], rng) ->
  (state, loss). Noise and times are drawn from fold_in(rng, step)."""
  step_rng = jax.random.fold_in(rng, state.step)
  loss, grads = jax.value_and_grad(
      lambda p: diffusion_loss(model, {**state.frozen, **p}, x0, step_rng))(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), loss


def jit_train_step(spec: PeerSpec, optimizer):
  """The whole step (loss, gradients, AdamW) as one program; the state is donated so the
  new parameters and moments are written over the old ones."""
  step = functools.partial(train_step, model=PeerSTUNet(spec), optimizer=optimizer)
  return jax.jit(step, donate_argnums=0)


def jit_sample_step(spec: PeerSpec):
  """One sampling step's denoiser call: (params, x [B, T, H, W, C], time [B]) -> eps."""
  model = PeerSTUNet(spec)
  return jax.jit(lambda params, x, time: model.apply({"params": params}, x, time))


# -- the peer-matched benchmark ------------------------------------------------------

PROGRAMS = (("train_step", (BASE, TEMPORAL)), ("train_step_frozen", (TEMPORAL,)),
            ("sample_step", None))


def data_parallel(batch: int):
  """(replicated, batch-split) shardings over every visible device: one device by
  default; with `--xla_force_host_platform_device_count=N` (and
  `--xla_cpu_multi_thread_eigen=false`) a CPU's cores each run their share of the batch
  as a device of their own, and the gradients are summed across them by GSPMD."""
  devices = jax.devices()
  if batch % len(devices):
    raise UserError(f"the batch of {batch} does not split over {len(devices)} devices")
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                       devices=devices)
  return timing.replicated(mesh), NamedSharding(mesh, P("data"))


def _train_program(spec: PeerSpec, trainable):
  """(fn() -> output to wait for, compiled program, compile seconds) of a train step on
  a fixed random batch; fn carries the donated state from call to call."""
  optimizer = make_optimizer()
  replicated, split_batch = data_parallel(spec.batch)
  state = jax.device_put(init_state(spec, trainable, jax.random.key(0), optimizer),
                         replicated)
  x0 = jax.device_put(jax.random.normal(jax.random.key(1), video_shape(spec, spec.batch)),
                      split_batch)
  rng = jax.random.key(2)
  compiled, seconds = timing.compile_timed(
      lambda: jit_train_step(spec, optimizer).lower(state, x0, rng))
  box = [state]

  def call():
    box[0], loss = compiled(box[0], x0, rng)
    return loss

  return call, compiled, seconds


def _sample_program(spec: PeerSpec):
  replicated, split_batch = data_parallel(spec.sample_batch)
  params = jax.device_put(init_params(spec, jax.random.key(0)), replicated)
  x = jax.device_put(jax.random.normal(jax.random.key(3), video_shape(spec, spec.sample_batch)),
                     split_batch)
  time = jax.device_put(jnp.full((spec.sample_batch,), 500.0), split_batch)
  compiled, seconds = timing.compile_timed(
      lambda: jit_sample_step(spec).lower(params, x, time))
  return lambda: compiled(params, x, time), compiled, seconds


def flops_by_program(spec: PeerSpec, taps: str) -> dict:
  return {"train_step": flop_count(spec, spec.batch, (BASE, TEMPORAL), taps).train_step,
          "train_step_frozen": flop_count(spec, spec.batch, (TEMPORAL,), taps).train_step,
          "sample_step": flop_count(spec, spec.sample_batch, (), taps).forward}


def benchmark(spec: PeerSpec, steps: int, warmup: int, preset: str = "peer-matched") -> dict:
  """Times the three programs the peer times (full training, frozen-base training, the
  sampling forward), each compiled once, with the batch split over the visible devices
  (data_parallel); see timing.assemble for the JSON. `flops` is counted like the peer (every conv tap); `flops_valid_taps` is the
  matmul work of the traced programs."""
  peak = timing.peak_flops(jax.devices()[:1])
  counted, valid = flops_by_program(spec, "all"), flops_by_program(spec, "valid")
  rows = {}
  for name, trainable in PROGRAMS:
    call, compiled, seconds = (_sample_program(spec) if trainable is None
                               else _train_program(spec, trainable))
    times = timing.timed_calls(call, steps, warmup)
    rows[name] = timing.row(counted[name], timing.StepTiming(
        tuple(times), seconds, timing.memory_report(compiled, seconds)), peak)
  params = param_counts(spec)
  settings = {**dataclasses.asdict(spec), "steps": steps, "warmup": warmup,
              "optimizer": "AdamW(lr=1e-4, weight_decay=0.01)",
              "loss": "eps-prediction MSE, cosine schedule", "devices": len(jax.devices())}
  notes = ["flops: counted like the peer's FlopCounterMode (convolutions count every "
           "kernel tap, padding included); flops_valid_taps: the taps that read input, "
           "XLA's convention, equal to the traced programs' matmul FLOPs",
           "train_step_frozen differentiates the temporal parameters only (no weight "
           "gradients of the 2D base, no AdamW moments for it)"]
  return timing.assemble(preset, rows, peak, settings, params, notes,
                         flops_valid_taps=valid)


def param_counts(spec: PeerSpec) -> dict:
  """Parameter counts per group, from shapes only."""
  shapes = jax.eval_shape(lambda rng: init_params(spec, rng), jax.random.key(0))
  counts = {group: sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(tree))
            for group, tree in shapes.items()}
  return {**counts, "total": sum(counts.values())}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=5,
                      help="timed calls of each program, median reported (default 5)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed calls after compiling (default 2)")
  parser.add_argument("--json", metavar="PATH", help="also write the results here")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (bfloat16: mixed precision, float32 parameters "
                           "and optimizer, as the peer under torch.autocast)")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1, --warmup >= 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  runtime.enable_compilation_cache()  # as `lumiere bench` does
  runtime.apply_cpu_defaults()  # as every `lumiere` command does
  try:
    runtime.apply_cpu_devices()  # LUMIERE_CPU_DEVICES, as every `lumiere` command does
    result = benchmark(PeerSpec(dtype=args.dtype), args.steps, args.warmup)
  except UserError as e:
    print(f"peer_unet.py: {e}", file=sys.stderr)
    return 2
  print(report.format_table(result))
  if args.json:
    atomic.write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  runtime.restart_with_huge_pages()  # as every `lumiere` command does
  sys.exit(main())
