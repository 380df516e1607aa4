"""Validation: every shape constraint, checked in Python before anything is traced or
compiled; each failure names the field and the values it allows."""

import ml_collections

from lumiere_jax.diffusion.config import validate_diffusion_config
from lumiere_jax.errors import ConfigError
from lumiere_jax.models import text as text_lib
from lumiere_jax.models.unet2d import heads_per_level
from lumiere_jax.train.config import validate_train_config

MODEL_KINDS = ("unet2d", "stunet")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "block")


def temporal_factor(model: ml_collections.ConfigDict) -> int:
  """Total temporal down-sampling factor N of a STUNet (1 for a 2D model)."""
  if model.kind != "stunet":
    return 1
  return 2 ** sum(bool(d) for d in model.temporal.down_levels)


def spatial_factor(model: ml_collections.ConfigDict) -> int:
  """Total spatial down-sampling factor: 2 per level after the first."""
  return 2 ** (len(model.block_out_channels) - 1)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value the model cannot use."""
  model, data, text = config.model, config.data, config.text
  _check(model.kind in MODEL_KINDS, "model.kind", model.kind, f"one of {MODEL_KINDS}")
  _check(model.dtype in DTYPES, "model.dtype", model.dtype, f"one of {DTYPES}")
  _check(model.remat in REMAT_POLICIES, "model.remat", model.remat,
         f"one of {REMAT_POLICIES}")
  channels = tuple(model.block_out_channels)
  levels = len(channels)
  _check(levels >= 1, "model.block_out_channels", channels, "at least one level")
  _check(model.layers_per_block >= 1, "model.layers_per_block", model.layers_per_block,
         "an integer >= 1")
  groups = model.norm_num_groups
  _check(groups >= 1, "model.norm_num_groups", groups, "an integer >= 1")
  for i, c in enumerate(channels):
    _check(c > 0 and c % groups == 0, f"model.block_out_channels[{i}]", c,
           f"a positive multiple of model.norm_num_groups={groups}")
  _check(len(model.cross_attention_levels) == levels, "model.cross_attention_levels",
         tuple(model.cross_attention_levels),
         f"one bool per level ({levels} levels in model.block_out_channels)")
  heads = heads_per_level(model)
  _check(len(heads) == levels, "model.num_attention_heads", model.num_attention_heads,
         f"an int or one int per level ({levels})")
  for i, (c, h) in enumerate(zip(channels, heads)):
    _check(h >= 1 and c % h == 0, f"model.num_attention_heads[{i}]", h,
           f"a divisor of model.block_out_channels[{i}]={c}")
  _check(model.in_channels in (3, 6, 7), "model.in_channels", model.in_channels,
         "3 (video), 6 (SSR: noisy + low-res) or 7 (conditional <J, C, M>)")
  _check(model.out_channels == 3, "model.out_channels", model.out_channels, "3")
  _check(model.cross_attention_dim == text.width, "model.cross_attention_dim",
         model.cross_attention_dim, f"text.width={text.width}")
  _check(text.width % text.num_heads == 0, "text.num_heads", text.num_heads,
         f"a divisor of text.width={text.width}")
  _check(text.max_length >= 2, "text.max_length", text.max_length, "an integer >= 2")
  try:
    words = text_lib.vocabulary_words(text.vocabulary)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  needed = text_lib.NUM_SPECIAL + len(words)
  _check(text.vocab_size >= needed, "text.vocab_size", text.vocab_size,
         f"an integer >= {needed} (text.vocabulary has {len(words)} words + "
         f"{text_lib.NUM_SPECIAL} special tokens)")

  if model.kind == "stunet":
    temporal = model.temporal
    _check(len(temporal.down_levels) == levels - 1, "model.temporal.down_levels",
           tuple(temporal.down_levels),
           f"one bool per spatial down-sampling ({levels - 1})")
    _check(temporal.kernel_size % 2 == 1 and temporal.kernel_size >= 1,
           "model.temporal.kernel_size", temporal.kernel_size, "an odd integer >= 1")
    _check(temporal.attention_blocks >= 0, "model.temporal.attention_blocks",
           temporal.attention_blocks, "an integer >= 0")
    _check(temporal.text_adapter_layers >= 0, "model.temporal.text_adapter_layers",
           temporal.text_adapter_layers, "an integer >= 0")
    if temporal.text_adapter_layers:
      _check(text.width % temporal.num_heads == 0, "model.temporal.num_heads",
             temporal.num_heads, f"a divisor of text.width={text.width} (the caption "
             "adapter's heads)")
    dropped = tuple(temporal.get("caption_drop_words", ()))
    _check(all(isinstance(w, str) and w in words for w in dropped),
           "model.temporal.caption_drop_words", dropped,
           "words of text.vocabulary (or empty)")
    parts = temporal.get("caption_parts", 0)
    _check(isinstance(parts, int) and parts >= 0 and parts != 1, "model.temporal.caption_parts",
           parts, "0 (off) or an integer >= 2")
    if parts:
      split = temporal.get("caption_split_word", "and")
      _check(isinstance(split, str) and split in words, "model.temporal.caption_split_word",
             split, "a word of text.vocabulary")
    pooling = temporal.get("film_pooling", "mean")
    _check(pooling in ("mean", "attention"), "model.temporal.film_pooling", pooling,
           "'mean' or 'attention'")
    if pooling == "attention":
      _check(temporal.conv_text_conditioning, "model.temporal.film_pooling", pooling,
             "'mean' unless model.temporal.conv_text_conditioning (there is no FiLM to pool for)")
    levels = temporal.get("attention_levels", ())
    _check(isinstance(levels, (tuple, list)) and len(set(levels)) == len(levels) and all(
        isinstance(level, int) and not isinstance(level, bool)
        and 0 <= level < len(channels) - 1 for level in levels),
        "model.temporal.attention_levels", levels,
        f"distinct conv levels in [0, {len(channels) - 2}] (the coarsest has attention)")
    _check(all(channels[level] % temporal.num_heads == 0 for level in levels),
           "model.temporal.attention_levels", levels,
           f"levels whose width model.temporal.num_heads={temporal.num_heads} divides")
    grid = temporal.get("attention_grid", 0)
    sizes = [data.resolution // 2 ** level for level in levels]
    _check(isinstance(grid, int) and not isinstance(grid, bool) and grid >= 0
           and all(size % grid == 0 for size in sizes) if grid else grid == 0,
           "model.temporal.attention_grid", grid,
           f"0 (per pixel) or a divisor of the attention levels' sizes {sizes}")
    _check(channels[-1] % temporal.num_heads == 0, "model.temporal.num_heads",
           temporal.num_heads, f"a divisor of the coarsest width {channels[-1]}")
    factor = temporal_factor(model)
    _check(data.num_frames >= 1 and data.num_frames % factor == 0, "data.num_frames",
           data.num_frames, f"a positive multiple of the temporal factor {factor} "
           f"(2 ** number of True in model.temporal.down_levels)")
    _check(config.diffusion.window % factor == 0, "diffusion.window", config.diffusion.window,
           f"0 (the clip length) or a multiple of the temporal factor {factor}")
  else:
    _check(data.num_frames >= 1, "data.num_frames", data.num_frames, "an integer >= 1")
  factor = spatial_factor(model)
  _check(data.resolution >= factor and data.resolution % factor == 0, "data.resolution",
         data.resolution, f"a positive multiple of the spatial factor {factor} "
         f"(2 ** (levels - 1))")
  _check(data.batch_size >= 1, "data.batch_size", data.batch_size, "an integer >= 1")
  _check(data.frame_stride >= 1, "data.frame_stride", data.frame_stride, "an integer >= 1")
  if model.in_channels == 6:
    _check(data.low_resolution >= 1 and data.resolution % data.low_resolution == 0,
           "data.low_resolution", data.low_resolution,
           f"a divisor of data.resolution={data.resolution} (the SSR model's input size)")
  else:
    _check(not config.diffusion.ssr_residual_scale, "diffusion.ssr_residual_scale",
           config.diffusion.ssr_residual_scale,
           "0 for a model that is not an SSR model (model.in_channels=6)")
  _validate_mesh(config.mesh)
  validate_diffusion_config(config.diffusion)
  validate_train_config(config)


def _validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  _check(len(mesh.axes) == len(mesh.shape), "mesh.shape", tuple(mesh.shape),
         f"one size per axis of mesh.axes={tuple(mesh.axes)}")
  _check(sum(s == -1 for s in mesh.shape) <= 1, "mesh.shape", tuple(mesh.shape),
         "positive sizes with at most one -1 (the rest of the devices)")
  _check(all(s == -1 or s >= 1 for s in mesh.shape), "mesh.shape", tuple(mesh.shape),
         "positive sizes or -1")


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"{field}={value!r} is invalid; allowed: {allowed}")
