"""The paper-scale Lumiere base model: 80 frames at 128x128, Imagen-like widths.

The paper does not disclose widths, depths or the number of temporal levels; this config
chooses five spatial levels (128 -> 8 pixels) and four temporal halvings (80 -> 5 frames),
the most that 80 = 2^4 * 5 allows, so that most computation happens on a compact
space-time representation. Meant for TPU pods; on CPU use it only through jax.eval_shape.

Variant `ssr`: the spatial super-resolution model, 128 -> 1024 (x8). LUMIERE.md: an
inflated SSR model upsamples the base model's 80 frames at 128x128 to 1024x1024; memory
forbids all 80 frames at once, so it runs on overlapping temporal windows fused at every
step (temporal MultiDiffusion), overlapping by 2 frames. The paper discloses neither the
window length nor the SSR architecture; this config chooses:
  * windows of 16 frames (the model trains on 16-frame clips), overlap 2: 80 frames are
    6 windows (starts 0, 14, 28, 42, 56, 64);
  * six spatial levels, 1024 -> 32 pixels, narrow at full resolution (an Imagen-style
    efficient SR U-Net: most channels where the pixels are few); self- and cross-attention
    only at 32x32 (1,024 tokens); two temporal halvings at the coarsest levels (16 -> 4
    frames), so the fine levels are per-frame 2D work plus factorised (2+1)D convs;
  * the windows sharded over the devices of the mesh (logical axis 'window' -> data and
    fsdp), padded with zero-weight windows to a multiple of the device count: one window
    per device on 8 devices for clips of up to 100 frames. benchmarks/ssr_memory.py
    measures the compiled peak memory per device as T grows from 16 to 80.

Run:
  lumiere train --config lumiere_base:t2v --workdir gs://BUCKET/lumiere_base_t2v
  lumiere train --config lumiere_base:ssr --workdir gs://BUCKET/lumiere_base_ssr
  lumiere upsample --checkpoint gs://BUCKET/lumiere_base_ssr --video clip128.npy --out out.mp4
"""

import ml_collections

from lumiere_jax.config import base_config
from lumiere_jax.config.defaults import DEFAULT_LOGICAL_AXIS_RULES

STAGES = ("t2i", "t2v", "ssr")


def get_config(arg: str = "t2v") -> ml_collections.ConfigDict:
  stage = arg or "t2v"
  if stage not in STAGES:
    raise ValueError(f"unknown variant {stage!r} of lumiere_base; allowed: {', '.join(STAGES)}")
  config = base_config()
  config.stage = stage

  model = config.model
  model.block_out_channels = (128, 256, 512, 768, 1024)
  model.layers_per_block = 3
  model.cross_attention_levels = (False, False, True, True, True)
  model.num_attention_heads = 16
  model.norm_num_groups = 32
  model.cross_attention_dim = 1024
  model.dtype = "bfloat16"
  model.remat = "block"
  model.temporal.down_levels = (True, True, True, True)  # 80 -> 40 -> 20 -> 10 -> 5
  model.temporal.attention_blocks = 4
  model.temporal.num_heads = 16

  text = config.text
  text.vocab_size = 32768
  text.max_length = 64
  text.width = 1024
  text.num_layers = 12
  text.num_heads = 16

  data = config.data
  data.resolution = 128
  data.num_frames = 80
  data.batch_size = 256

  # Fully-sharded data parallel by default. On 16 GiB chips (TPU v5e), one clip per 8
  # devices fits: mesh.shape=(-1, 8, 1) with data.batch_size = the data axis, each clip
  # split by frames, rows and tokens (benchmarks/RESULTS.md, "A layout that fits").
  config.mesh.shape = (1, -1, 1)
  if stage == "t2i":
    model.kind = "unet2d"
    data.num_frames = 1
    data.batch_size = 2048
    # The text encoder is frozen, as Lumiere keeps T5 frozen: trained on single frames it
    # learns to drop the motion words that t2v needs (docs/learning_record.md measures
    # this on shapes_tiny). An init_checkpoint that holds a "text" group replaces the
    # fixed random encoder.
    config.train.trainable = ("backbone",)
    config.train.frozen_at_init = ("text",)
  elif stage == "ssr":
    model.in_channels = 6  # noisy clip + the low-resolution clip, upsampled and noised
    model.block_out_channels = (128, 128, 256, 512, 768, 1024)
    model.layers_per_block = 2
    model.cross_attention_levels = (False, False, False, False, False, True)
    model.temporal.down_levels = (False, False, False, True, True)  # 16 -> 8 -> 4 frames
    model.temporal.attention_blocks = 2
    model.temporal.text_conditioning = False
    data.resolution = 1024
    data.low_resolution = 128
    data.num_frames = 16  # training clips = the sampling window
    data.batch_size = 64
    config.diffusion.window = 16
    config.diffusion.window_overlap = 2
    config.diffusion.guidance = 1.0  # the low-resolution clip conditions; no CFG needed
    config.diffusion.steps = 32
    config.train.trainable = ("backbone", "temporal")
    config.train.frozen_at_init = ("text",)
    config.logical_axis_rules = (("window", ("data", "fsdp")),) + DEFAULT_LOGICAL_AXIS_RULES
  return config
