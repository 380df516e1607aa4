"""The Space-Time U-Net: the frozen T2I backbone plus temporal layers.

Parameters: {'backbone': <UNet2D params, unchanged>, 'temporal': <new layers>[, 'adapter':
<caption adapter layers, model.temporal.text_adapter_layers>][, 'local_film': <the conv
blocks' per-position FiLMs, model.temporal.local_film>][, 'film_pool': <the conv blocks'
per-position caption pools, model.temporal.film_pooling="attention">][, 'level_attention':
<attention after the conv blocks of model.temporal.attention_levels>]}, so the
frozen/trainable split is visible at the top of the tree (see models/build.py).

Where the temporal layers go, per LUMIERE.md:
  * after every spatial down-sampling named in `model.temporal.down_levels`, a temporal
    down-sampling; after the mirrored spatial up-sampling, a temporal up-sampling;
  * after every resnet (+ transformer) of the down and up blocks, an inflation block:
    convolution-based at every level but the coarsest, attention-based at the coarsest;
  * in the mid block (coarsest level), `attention_blocks` stacked attention blocks;
  * (an extension, off in the paper's layout) after the conv inflation blocks of
    `model.temporal.attention_levels`, temporal attention at each pixel.
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lumiere_jax.models import temporal as tl
from lumiere_jax.models import text as text_lib
from lumiere_jax.models import unet2d
from lumiere_jax.models.unet2d import UNetSpec, maybe_remat
from lumiere_jax.parallel import sharding


@dataclasses.dataclass(frozen=True)
class TemporalSpec:
  down_levels: tuple
  kernel_size: int
  attention_blocks: int
  heads: int
  text_conditioning: bool
  conv_text_conditioning: bool
  spacetime_attention: bool
  text_adapter_layers: int = 0
  caption_views: int = 1  # 2: the temporal layers read a caption of their own
  local_film: bool = False
  caption_parts: int = 0  # > 0: and one pooled token per part of their caption
  film_pool: bool = False  # the conv blocks' FiLM pools the caption per position
  attention_levels: tuple = ()  # conv levels whose blocks are followed by attention
  attention_grid: int = 0  # > 0: that attention is space-time on an N x N pooled grid

  @classmethod
  def from_config(cls, temporal_config) -> "TemporalSpec":
    return cls(down_levels=tuple(bool(d) for d in temporal_config.down_levels),
               kernel_size=temporal_config.kernel_size,
               attention_blocks=temporal_config.attention_blocks,
               heads=temporal_config.num_heads,
               text_conditioning=temporal_config.text_conditioning,
               conv_text_conditioning=temporal_config.conv_text_conditioning,
               spacetime_attention=temporal_config.spacetime_attention,
               text_adapter_layers=temporal_config.text_adapter_layers,
               caption_views=2 if temporal_config.get("caption_drop_words") else 1,
               local_film=bool(temporal_config.get("local_film", False)),
               caption_parts=int(temporal_config.get("caption_parts", 0)),
               film_pool=temporal_config.get("film_pooling", "mean") == "attention",
               attention_levels=tuple(int(level) for level in
                                      temporal_config.get("attention_levels", ())),
               attention_grid=int(temporal_config.get("attention_grid", 0)))


class TemporalLayers(nn.Module):
  """All temporal layers of a STUNet, keyed by where they go (see module docstring)."""

  unet: UNetSpec
  spec: TemporalSpec

  def setup(self):
    u, s = self.unet, self.spec
    dtype = jnp.dtype(u.dtype)
    coarsest = u.levels - 1
    conv_block = maybe_remat(tl.ConvInflationBlock, u.remat)
    attention_block = maybe_remat(tl.AttentionInflationBlock, u.remat)

    def inflation(level):
      if level == coarsest:
        return attention_block(s.heads, s.text_conditioning, s.spacetime_attention,
                               dtype=dtype)
      return conv_block(u.groups, s.kernel_size, s.conv_text_conditioning, dtype=dtype)

    blocks = {}
    for level in range(u.levels):
      for j in range(u.layers_per_block):
        blocks[f"down_{level}_{j}"] = inflation(level)
      for j in range(u.layers_per_block + 1):
        blocks[f"up_{level}_{j}"] = inflation(level)
    self.blocks = blocks
    self.mid = [attention_block(s.heads, s.text_conditioning, s.spacetime_attention,
                                dtype=dtype)
                for _ in range(s.attention_blocks)]
    self.downsample = {str(i): tl.TemporalDownsample(s.kernel_size, dtype=dtype)
                       for i, on in enumerate(s.down_levels) if on}
    self.upsample = {str(i): tl.TemporalUpsample(s.kernel_size, dtype=dtype)
                     for i, on in enumerate(s.down_levels) if on}


def conv_block_names(unet: UNetSpec, levels=None):
  """The keys of the conv inflation blocks (every level but the coarsest, or `levels`)."""
  levels = range(unet.levels - 1) if levels is None else levels
  return [f"{path}_{level}_{j}" for level in levels
          for path, count in (("down", unet.layers_per_block), ("up", unet.layers_per_block + 1))
          for j in range(count)]


class PerConvBlock(nn.Module):
  """One `block` module per conv inflation block, keyed like them: tl.LocalFiLM
  (model.temporal.local_film) or tl.FiLMPool (model.temporal.film_pooling)."""

  unet: UNetSpec
  spec: TemporalSpec
  block: type

  def setup(self):
    make = maybe_remat(self.block, self.unet.remat)
    self.blocks = {name: make(self.spec.heads, dtype=jnp.dtype(self.unet.dtype))
                   for name in conv_block_names(self.unet)}


class LevelAttention(nn.Module):
  """The attention blocks after the conv inflation blocks of `spec.attention_levels`,
  keyed like them (model.temporal.attention_levels, parameter group 'level_attention'):
  self-attention over the clip's frames at each pixel (the paper's temporal attention,
  without text; identity at init). Per pixel, not space-time: over every token of a fine
  level it costs more than the rest of the step (docs/learning_record.md, "Stop 57").
  With `spec.attention_grid`, space-time attention on the level pooled to that grid
  (tl.PooledSpaceTimeAttention) instead."""

  unet: UNetSpec
  spec: TemporalSpec

  def setup(self):
    dtype = jnp.dtype(self.unet.dtype)
    if self.spec.attention_grid:
      make = maybe_remat(tl.PooledSpaceTimeAttention, self.unet.remat)
      block = lambda: make(self.spec.heads, self.spec.attention_grid, dtype=dtype)
    else:
      make = maybe_remat(tl.AttentionInflationBlock, self.unet.remat)
      block = lambda: make(self.spec.heads, False, False, dtype=dtype)
    self.blocks = {name: block()
                   for name in conv_block_names(self.unet, self.spec.attention_levels)}


class _TemporalHooks(unet2d.Inflation):
  """Runs the temporal layers at the backbone's hook points, moving between the frame
  layout [B*T, H, W, C] and the video layout [B, T, H, W, C]."""

  def __init__(self, temporal: TemporalLayers, batch: int, context, context_mask,
               local_film=None, film_pool=None, level_attention=None):
    self.temporal = temporal
    self.level_attention = level_attention
    self.local_film = local_film
    self.film_pool = film_pool
    self.batch = batch
    self.context = context
    self.context_bias = unet2d.layers.mask_to_bias(context_mask[:, None, None, :])
    self.pooled = (tl.pooled_text(context, context_mask)
                   if temporal.spec.conv_text_conditioning else None)
    self.coarsest = temporal.unet.levels - 1

  def _video(self, h):
    v = h.reshape(self.batch, h.shape[0] // self.batch, *h.shape[1:])
    return sharding.constrain(v, tl.VIDEO_AXES)

  def _frames(self, v):
    return v.reshape(-1, *v.shape[2:])

  def _inflate(self, name, level, h):
    v = self._video(h)
    block = self.temporal.blocks[name]
    if level == self.coarsest:
      return self._frames(block(v, self.context, self.context_bias))
    local = (self.local_film.blocks[name](v, self.context, self.context_bias)
             if self.local_film is not None else None)
    text = (self.film_pool.blocks[name](v, self.context, self.context_bias)
            if self.film_pool is not None else self.pooled)
    v = block(v, text, local)
    if self.level_attention is not None and level in self.temporal.spec.attention_levels:
      v = self.level_attention.blocks[name](v)
    return self._frames(v)

  def after_block(self, level, path, index, h):
    return self._inflate(f"{path}_{level}_{index}", level, h)

  def after_downsample(self, level, h):
    if not self.temporal.spec.down_levels[level]:
      return h
    return self._frames(self.temporal.downsample[str(level)](self._video(h)))

  def after_upsample(self, level, h):
    if not self.temporal.spec.down_levels[level]:
      return h
    return self._frames(self.temporal.upsample[str(level)](self._video(h)))

  def mid(self, h):
    for block in self.temporal.mid:
      h = self._frames(block(self._video(h), self.context, self.context_bias))
    return h


def with_part_tokens(context, mask, parts, part_masks):
  """The temporal layers' caption [B, L, D] followed by one token per part, the mean of
  that part encoded on its own ([B, L + P, D], mask [B, L + P]; a part without words is
  masked, and so are both of a caption with one part, which reads exactly as without the
  option). Each part token holds one object's words only, so a position that reads an
  object's colour in it reads that object's motion too: one cross-attention binds them
  (model.temporal.caption_parts)."""
  tokens = jnp.stack([tl.pooled_text(c, m) for c, m in zip(parts, part_masks)], axis=1)
  present = jnp.stack([m.any(axis=-1) for m in part_masks], axis=1)
  present &= jnp.sum(present, axis=1, keepdims=True) >= 2
  return (jnp.concatenate([context, tokens.astype(context.dtype)], axis=1),
          jnp.concatenate([mask, present], axis=1))


class STUNet(nn.Module):
  """Space-Time U-Net. x [B, T, H, W, Cin], timesteps [B], context [B, L, D],
  context_mask [B, L] (SSR: noise_level [B]) -> [B, T, H, W, Cout] (float32)."""

  unet: UNetSpec
  temporal_spec: TemporalSpec

  def setup(self):
    self.backbone = unet2d.UNet2D(self.unet)
    self.temporal = TemporalLayers(self.unet, self.temporal_spec)
    if self.temporal_spec.text_adapter_layers:
      self.adapter = text_lib.CaptionAdapter(self.temporal_spec.text_adapter_layers,
                                             self.temporal_spec.heads,
                                             dtype=jnp.dtype(self.unet.dtype))
    if self.temporal_spec.local_film:
      self.local_film = PerConvBlock(self.unet, self.temporal_spec, tl.LocalFiLM)
    if self.temporal_spec.film_pool:
      self.film_pool = PerConvBlock(self.unet, self.temporal_spec, tl.FiLMPool)
    if self.temporal_spec.attention_levels:
      self.level_attention = LevelAttention(self.unet, self.temporal_spec)

  def __call__(self, x, timesteps, context, context_mask, noise_level=None):
    b, t = x.shape[:2]
    # Caption views side by side (text_lib.CaptionViews): the backbone reads the first, the
    # temporal layers the second where there is one (model.temporal.caption_drop_words),
    # followed by one pooled token per part of their caption (model.temporal.caption_parts).
    spec = self.temporal_spec
    views = text_lib.split_views(context, spec.caption_views + spec.caption_parts)
    masks = text_lib.split_views(context_mask, spec.caption_views + spec.caption_parts)
    if spec.text_adapter_layers:
      views = [self.adapter(c, m) for c, m in zip(views, masks)]
    context, context_mask = views[0], masks[0]
    temporal, temporal_mask = views[spec.caption_views - 1], masks[spec.caption_views - 1]
    if spec.caption_parts:
      temporal, temporal_mask = with_part_tokens(
          temporal, temporal_mask, views[spec.caption_views:], masks[spec.caption_views:])
    x = sharding.constrain(x, tl.VIDEO_AXES)
    frames = x.reshape(b * t, *x.shape[2:])
    hooks = _TemporalHooks(self.temporal, b, temporal.astype(jnp.dtype(self.unet.dtype)),
                           temporal_mask,
                           self.local_film if self.temporal_spec.local_film else None,
                           self.film_pool if self.temporal_spec.film_pool else None,
                           self.level_attention if self.temporal_spec.attention_levels
                           else None)
    out = unet2d.unet_forward(self.backbone, frames, timesteps, context, context_mask, hooks,
                              noise_level)
    return out.reshape(b, t, *out.shape[1:])
