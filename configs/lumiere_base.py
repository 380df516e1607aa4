"""The paper-scale Lumiere base model: 80 frames at 128x128, Imagen-like widths.

The paper does not disclose widths, depths or the number of temporal levels; this config
chooses five spatial levels (128 -> 8 pixels) and four temporal halvings (80 -> 5 frames),
the most that 80 = 2^4 * 5 allows, so that most computation happens on a compact
space-time representation. Meant for TPU pods; on CPU use it only through jax.eval_shape.

Run:
  lumiere train --config lumiere_base:t2v --workdir gs://BUCKET/lumiere_base_t2v
"""

import ml_collections

from lumiere_jax.config import base_config

STAGES = ("t2i", "t2v")


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

  config.mesh.shape = (1, -1, 1)  # fully-sharded data parallel by default
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
  return config
