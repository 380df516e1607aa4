"""The text-to-image backbone, mirroring diffusers' UNet2DConditionModel.

Block structure and parameter paths match diffusers (`down_blocks_0/resnets_1/conv1/kernel`
for `down_blocks.0.resnets.1.conv1.weight`), so public T2I weights convert by a rename
(models/convert.py). The forward pass is written once, in `unet_forward`, with hook points
(`Inflation`) where the Space-Time U-Net inserts its temporal layers; the plain 2D model
uses the identity hooks.

Frames as batch: the backbone sees video frames as a batch [B*T, H, W, C]. Per-video
tensors (time embedding, text) stay [B, ...] and are broadcast to however many frames the
current level has, derived from the activation's leading dimension. That is what keeps
them right after temporal down-sampling.
"""

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from lumiere_jax.models import conditioning, layers
from lumiere_jax.parallel import sharding

FRAME_AXES = ("batch", "height", "width", "embed")
TOKEN_AXES = ("batch", "length", "embed")


def add_per_video(h, per_video):
  """h [B*T, ...C] + per_video [B, C], repeated to each video's frames (layers.per_sample,
  so that its gradient is summed per frame first)."""
  return h + layers.per_sample(per_video, h)


class ResnetBlock2D(nn.Module):
  out_channels: int
  groups: int
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    h = layers.GroupNorm(num_groups=self.groups, epsilon=self.eps, silu=True, name="norm1")(x)
    h = layers.Conv2D(self.out_channels, dtype=self.dtype, name="conv1")(h)
    t = layers.Dense(self.out_channels, ("embed", "conv_out"), dtype=self.dtype,
                     name="time_emb_proj")(nn.silu(temb))
    h = add_per_video(h, t)
    h = layers.GroupNorm(num_groups=self.groups, epsilon=self.eps, silu=True, name="norm2")(h)
    h = layers.Conv2D(self.out_channels, dtype=self.dtype, name="conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = layers.Conv2D(self.out_channels, kernel_size=1, dtype=self.dtype,
                        name="conv_shortcut")(x)
    return x.astype(self.dtype) + h


class GEGLU(nn.Module):
  inner: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden, gate = jnp.split(
        layers.Dense(2 * self.inner, ("embed", "mlp"), dtype=self.dtype, name="proj")(x), 2,
        axis=-1)
    return hidden * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  mult: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    h = GEGLU(dim * self.mult, dtype=self.dtype, name="net_0")(x)
    return layers.Dense(dim, ("mlp", "embed"), dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
  heads: int
  dim_head: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias, grid=None):
    attn = lambda name: layers.Attention(self.heads, self.dim_head, dtype=self.dtype,
                                         name=name)
    x = x + attn("attn1")(layers.LayerNorm(name="norm1")(x))
    x = x + attn("attn2")(layers.LayerNorm(name="norm2")(x), context, context_bias, grid)
    return x + FeedForward(dtype=self.dtype, name="ff")(layers.LayerNorm(name="norm3")(x))


class Transformer2D(nn.Module):
  """GroupNorm, 1x1 proj_in, transformer blocks over H*W tokens, 1x1 proj_out, residual."""

  heads: int
  groups: int
  num_layers: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_bias):
    n, hh, ww, c = x.shape
    h = layers.GroupNorm(num_groups=self.groups, epsilon=1e-6, name="norm")(x)
    h = layers.Conv2D(c, kernel_size=1, dtype=self.dtype, name="proj_in")(h)
    # The token stream stays batch-sharded: left to itself, XLA's SPMD partitioner (jax
    # 0.10.2, CPU) shards it over 'tensor' after proj_in and then miscompiles the
    # residual add of a (data, fsdp)-sharded batch (tests/test_sharding.py has the repro).
    tokens = lambda y: sharding.constrain(y, TOKEN_AXES)
    h = tokens(h.reshape(n, hh * ww, c))
    for k in range(self.num_layers):
      h = tokens(BasicTransformerBlock(self.heads, c // self.heads, dtype=self.dtype,
                                       name=f"transformer_blocks_{k}")(
          h, context, context_bias,
          None if context is None else (n // context.shape[0], hh, ww)))
    h = layers.Conv2D(c, kernel_size=1, dtype=self.dtype, name="proj_out")(
        h.reshape(n, hh, ww, c))
    return h + x.astype(self.dtype)


class Downsample2D(nn.Module):
  channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return layers.Conv2D(self.channels, stride=2, dtype=self.dtype, name="conv")(x)


class Upsample2D(nn.Module):
  channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return layers.Conv2D(self.channels, dtype=self.dtype, name="conv")(x)


class TimestepEmbedding(nn.Module):
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = layers.Dense(self.dim, ("embed", "mlp"), dtype=self.dtype, name="linear_1")(x)
    return layers.Dense(self.dim, ("mlp", "embed"), dtype=self.dtype,
                        name="linear_2")(nn.silu(x))


class NoiseLevelEmbedding(nn.Module):
  """The SSR model's conditioning noise level (noise conditioning augmentation), embedded
  like the timestep and added to the time embedding. The output layer starts at zero, so
  a model initialised from a backbone that never saw the level starts as that backbone."""

  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = layers.Dense(self.dim, ("embed", "mlp"), dtype=self.dtype, name="linear_1")(x)
    return layers.Dense(self.dim, ("mlp", "embed"), dtype=self.dtype,
                        kernel_init=nn.initializers.zeros, name="linear_2")(nn.silu(x))


def heads_per_level(model_config) -> Tuple[int, ...]:
  """Attention heads of each level: `model.num_attention_heads` is one int for every
  level or one int per level (diffusers' `attention_head_dim` means the same)."""
  heads = model_config.num_attention_heads
  if isinstance(heads, int):
    return (heads,) * len(model_config.block_out_channels)
  return tuple(heads)


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """Static structure of the backbone, derived once from the model config."""

  in_channels: int
  out_channels: int
  block_out_channels: tuple
  layers_per_block: int
  cross_attention_levels: tuple
  heads: tuple
  transformer_layers: int
  groups: int
  eps: float
  flip_sin_to_cos: bool
  freq_shift: float
  dtype: str
  remat: str
  noise_level_input: bool = False  # SSR: the conditioning's noise level is an input

  @classmethod
  def from_config(cls, model_config) -> "UNetSpec":
    return cls(in_channels=model_config.in_channels, out_channels=model_config.out_channels,
               block_out_channels=tuple(model_config.block_out_channels),
               layers_per_block=model_config.layers_per_block,
               cross_attention_levels=tuple(model_config.cross_attention_levels),
               heads=tuple(heads_per_level(model_config)),
               transformer_layers=model_config.transformer_layers_per_block,
               groups=model_config.norm_num_groups, eps=model_config.norm_eps,
               flip_sin_to_cos=model_config.flip_sin_to_cos,
               freq_shift=model_config.freq_shift, dtype=model_config.dtype,
               remat=model_config.remat,
               noise_level_input=conditioning.takes_noise_level(model_config.in_channels))

  @property
  def levels(self) -> int:
    return len(self.block_out_channels)


def maybe_remat(module_cls, policy: str):
  """policy "block": recompute each ResNet, transformer and inflation block in the
  backward pass instead of keeping its activations."""
  return nn.remat(module_cls) if policy == "block" else module_cls


def _resnet(s: UNetSpec, channels: int):
  return maybe_remat(ResnetBlock2D, s.remat)(channels, s.groups, s.eps,
                                             dtype=jnp.dtype(s.dtype))


def _transformer(s: UNetSpec, level: int):
  return maybe_remat(Transformer2D, s.remat)(s.heads[level], s.groups, s.transformer_layers,
                                             dtype=jnp.dtype(s.dtype))


class LevelBlock(nn.Module):
  """diffusers' (CrossAttn)DownBlock2D / (CrossAttn)UpBlock2D at one spatial level.

  Down blocks have layers_per_block resnets and a stride-2 down-sampler except at the
  coarsest level; up blocks have one resnet more (for the extra skip) and an up-sampler
  except at the finest level.
  """

  spec: UNetSpec
  level: int
  direction: str  # "down" or "up"

  def setup(self):
    s = self.spec
    channels = s.block_out_channels[self.level]
    count = s.layers_per_block + (self.direction == "up")
    self.resnets = [_resnet(s, channels) for _ in range(count)]
    if s.cross_attention_levels[self.level]:
      self.attentions = [_transformer(s, self.level) for _ in range(count)]
    if self.direction == "down" and self.level < s.levels - 1:
      self.downsamplers = [Downsample2D(channels, dtype=jnp.dtype(s.dtype))]
    if self.direction == "up" and self.level > 0:
      self.upsamplers = [Upsample2D(channels, dtype=jnp.dtype(s.dtype))]

  @property
  def has_attention(self) -> bool:
    return bool(self.spec.cross_attention_levels[self.level])


class MidBlock(nn.Module):
  """diffusers' UNetMidBlock2DCrossAttn: resnet, transformer, resnet."""

  spec: UNetSpec

  def setup(self):
    s = self.spec
    self.resnets = [_resnet(s, s.block_out_channels[-1]) for _ in range(2)]
    self.attentions = [_transformer(s, s.levels - 1)]


class UNet2D(nn.Module):
  """UNet2DConditionModel-style backbone. __call__: x [N, H, W, Cin], timesteps [B],
  context [B, L, D], context_mask [B, L] (and, for an SSR model, the conditioning's noise
  level [B]) -> [N, H, W, Cout], N a multiple of B."""

  spec: UNetSpec

  def setup(self):
    s = self.spec
    dtype = jnp.dtype(s.dtype)
    self.conv_in = layers.Conv2D(s.block_out_channels[0], dtype=dtype)
    self.time_embedding = TimestepEmbedding(4 * s.block_out_channels[0], dtype=dtype)
    if s.noise_level_input:
      self.noise_level_embedding = NoiseLevelEmbedding(4 * s.block_out_channels[0],
                                                       dtype=dtype)
    self.down_blocks = [LevelBlock(s, level, "down") for level in range(s.levels)]
    self.mid_block = MidBlock(s)
    self.up_blocks = [LevelBlock(s, s.levels - 1 - k, "up") for k in range(s.levels)]
    self.conv_norm_out = layers.GroupNorm(num_groups=s.groups, epsilon=s.eps, silu=True)
    self.conv_out = layers.Conv2D(s.out_channels, dtype=dtype)

  def __call__(self, x, timesteps, context, context_mask, noise_level=None):
    return unet_forward(self, x, timesteps, context, context_mask, Inflation(), noise_level)


class Inflation:
  """Hook points of the forward pass. The identity here; the STUNet overrides them.

  `level` counts spatial levels from the finest (0) to the coarsest (levels - 1).
  """

  def after_block(self, level: int, path: str, index: int, h):
    del level, path, index
    return h

  def after_downsample(self, level: int, h):
    del level
    return h

  def after_upsample(self, level: int, h):
    del level
    return h

  def mid(self, h):
    return h


def time_and_noise_embedding(unet: UNet2D, timesteps, noise_level=None):
  """[B, 4 C0]: the timestep's embedding, plus the conditioning noise level's for a model
  that takes one (a level of None is 0, clean conditioning). Both are diffusers-style
  timesteps (0..1000)."""
  s = unet.spec
  dtype = jnp.dtype(s.dtype)
  embed = lambda v: layers.sinusoidal_embedding(v, s.block_out_channels[0],
                                                s.flip_sin_to_cos, s.freq_shift).astype(dtype)
  temb = unet.time_embedding(embed(timesteps))
  if s.noise_level_input:
    level = jnp.zeros_like(timesteps) if noise_level is None else noise_level
    temb = temb + unet.noise_level_embedding(embed(level))
  return temb


def unet_forward(unet: UNet2D, x, timesteps, context, context_mask, inflation: Inflation,
                 noise_level=None):
  """The backbone's forward pass with temporal hooks; see the module docstring."""
  s = unet.spec
  dtype = jnp.dtype(s.dtype)
  temb = time_and_noise_embedding(unet, timesteps, noise_level)
  bias = layers.mask_to_bias(context_mask[:, None, None, :])
  context = context.astype(dtype)
  constrain = lambda h: sharding.constrain(h, FRAME_AXES)

  h = constrain(unet.conv_in(x))
  skips = [h]
  for i, block in enumerate(unet.down_blocks):
    for j, resnet in enumerate(block.resnets):
      h = resnet(h, temb)
      if block.has_attention:
        h = block.attentions[j](h, context, bias)
      h = constrain(inflation.after_block(i, "down", j, h))
      skips.append(h)
    if i < s.levels - 1:
      h = inflation.after_downsample(i, block.downsamplers[0](h))
      skips.append(h)

  mid = unet.mid_block
  h = mid.resnets[0](h, temb)
  h = mid.attentions[0](h, context, bias)
  h = mid.resnets[1](inflation.mid(h), temb)

  for k, block in enumerate(unet.up_blocks):
    level = s.levels - 1 - k
    for j, resnet in enumerate(block.resnets):
      h = resnet(jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1), temb)
      if block.has_attention:
        h = block.attentions[j](h, context, bias)
      h = constrain(inflation.after_block(level, "up", j, h))
    if level > 0:
      h = inflation.after_upsample(level - 1, block.upsamplers[0](h))

  h = unet.conv_norm_out(h)
  return unet.conv_out(h).astype(jnp.float32)
