"""CPU-sized Lumiere on the synthetic "shapes" dataset: 16 frames at 32x32, width 32.

Variants, one per training stage:
  t2i    the text-to-image backbone (UNet2DConditionModel-style), trained on frames
  t2v    the inflated Space-Time U-Net; backbone frozen, temporal layers trained
  ssr    spatial super-resolution x4, 32 -> 128, conditioned on the low-resolution clip
         (noised: noise conditioning augmentation), sampled in overlapping 8-frame windows
  ssr_x2 the same model x2, 32 -> 64, in the residual form over bicubic upsampling (the
         x4 model did not beat bicubic on PSNR here; docs/ssr.md has both)
  cond   7-channel <J, C, M> conditional fine-tune (image-to-video, inpainting, ...,
         and temporal super-resolution from quarter-rate keyframes)
  keyframes  the keyframe model of the keyframes + TSR baseline: 4 frames at a quarter
         of the frame rate, no temporal down-sampling
  style  backbone fine-tune on a style, for stylized generation

Run:
  lumiere data build shapes --out data/shapes16 --num-videos 2000 --resolution 32 --frames 16
  lumiere train --config shapes_tiny:t2i --workdir workdirs/tiny_t2i \
      --config.train.data_dir=data/shapes16
  lumiere train --config shapes_tiny:t2v --workdir workdirs/tiny_t2v \
      --config.train.data_dir=data/shapes16 --config.train.init_checkpoint=workdirs/tiny_t2i
  lumiere data build shapes --out data/shapes128 --num-videos 2000 --resolution 128 --frames 16
  lumiere train --config shapes_tiny:ssr --workdir workdirs/tiny_ssr \
      --config.train.data_dir=data/shapes128
  lumiere upsample --checkpoint workdirs/tiny_ssr --video low.npy --out high.mp4
  lumiere train --config shapes_tiny:cond --workdir workdirs/tiny_cond \
      --config.train.data_dir=data/shapes16 --config.train.init_checkpoint=workdirs/tiny_t2v
  lumiere animate --checkpoint workdirs/tiny_cond --image frame.png \
      --prompt "a red circle moving left" --out clip.mp4
  lumiere data build shapes --out data/shapes16_outlined --num-videos 2000 --resolution 32 \
      --frames 16 --style outlined
  lumiere train --config shapes_tiny:style --workdir workdirs/tiny_style \
      --config.train.data_dir=data/shapes16_outlined --config.train.init_checkpoint=workdirs/tiny_t2v
  lumiere stylize --style-checkpoint workdirs/tiny_style --alpha 0.7 \
      --prompt "a red circle moving left" --out styled.mp4
(launch/shapes_recipe.sh runs the shipped models' recipe, cond and style stages included.)
"""

import ml_collections

from lumiere_jax.config import base_config

STAGES = ("t2i", "t2v", "ssr", "ssr_x2", "cond", "style", "keyframes")


def get_config(arg: str = "t2v") -> ml_collections.ConfigDict:
  stage = arg or "t2v"
  if stage not in STAGES:
    raise ValueError(f"unknown variant {stage!r} of shapes_tiny; allowed: {', '.join(STAGES)}")
  config = base_config()
  config.stage = stage

  model = config.model
  model.block_out_channels = (32, 64, 64)
  model.layers_per_block = 1
  model.cross_attention_levels = (False, True, True)
  model.num_attention_heads = 4
  model.norm_num_groups = 8
  model.cross_attention_dim = 64
  model.temporal.down_levels = (True, True)  # 16 -> 8 -> 4 frames
  model.temporal.attention_blocks = 1
  model.temporal.num_heads = 4
  # The conv inflation blocks see the caption too (FiLM; lumiere_jax/config/defaults.py says why).
  model.temporal.conv_text_conditioning = True

  text = config.text
  text.vocab_size = 64  # the 23-word shapes vocabulary + 4 special tokens, room to grow
  text.max_length = 24
  text.width = 64
  text.num_layers = 2
  text.num_heads = 4

  # Static (clip) thresholding: the shapes are saturated colours on a black background, so
  # dynamic thresholding's division by s > 1 (guided x0 overshooting +-1) lifts the
  # background to grey and leaves it noisy (docs/learning_record.md shows both).
  config.diffusion.threshold = "static"

  data = config.data
  data.resolution = 32
  data.num_frames = 16
  data.batch_size = 8

  if stage == "t2i":
    model.kind = "unet2d"
    data.num_frames = 1
    data.batch_size = 32
    # The text encoder stays a fixed random transformer, as Imagen and Lumiere keep T5
    # frozen: trained with the backbone on single frames it learns to drop the motion
    # words (no frame shows motion), and the temporal layers then cannot follow them
    # (docs/learning_record.md measures both). t2v loads it, frozen, from this stage.
    config.train.trainable = ("backbone",)
    config.train.frozen_at_init = ("text",)
  elif stage in ("ssr", "ssr_x2"):
    # x4: 32 -> 128, the base model's frames to four times their size. Four levels
    # (128 -> 16 pixels) so that the only self-attention, at the coarsest, sees 256 tokens;
    # the fine levels are narrow (16 channels): sharpening edges is local work. Forward
    # 1.7 GFLOPs per frame (the base model: 0.55), so a step of 4 x 8 frames is 160 GFLOPs
    # with the backward pass (bench/flops.py).
    model.in_channels = 6  # noisy high-res video + upsampled low-res conditioning
    model.block_out_channels = (16, 16, 32, 64)
    model.cross_attention_levels = (False, False, False, True)
    model.temporal.down_levels = (False, True, True)  # 8 -> 4 -> 2 frames
    # The caption hardly matters to super-resolution; the text stays in the backbone's
    # coarsest cross-attention only (a prompt is optional at sampling).
    model.temporal.text_conditioning = False
    model.temporal.conv_text_conditioning = False
    data.resolution = 128
    data.low_resolution = 32
    data.num_frames = 8  # training clips = the sampling window
    data.batch_size = 4
    config.train.trainable = ("backbone", "temporal")
    config.train.frozen_at_init = ("text",)
    config.diffusion.guidance = 1.0  # the low-resolution clip conditions; no CFG needed
    config.diffusion.steps = 32
    config.diffusion.window_overlap = 2
    if stage == "ssr_x2":
      # 32 -> 64 (a quarter of x4's cost per step). The model diffuses 6 (clip - bicubic
      # upsampling): the residual's std on the shapes data is 0.059, the clips' 0.39; a
      # model that predicts no residual samples bicubic upsampling.
      data.resolution = 64
      config.diffusion.ssr_residual_scale = 6.0
      config.diffusion.ssr_residual_base = "bicubic"
      config.diffusion.threshold = "none"
  elif stage == "cond":
    # <J, C, M>: the trained text-to-video model (train.init_checkpoint, a t2v workdir)
    # with its first convolution widened from 3 to 7 input channels, the new weights
    # zero (models/widen.py), then fine-tuned whole but for the frozen text encoder.
    model.in_channels = 7
    config.train.trainable = ("backbone", "temporal")
    # One mask per clip, drawn with data.mask_weights (data/masks.py: first frame, first
    # and last, keyframes, quarter-rate keyframes for TSR, boxes, borders, cinemagraph
    # regions; "none" keeps text-to-video).
  elif stage == "keyframes":
    # The baseline Lumiere argues against, its first half: a video model at a quarter of
    # the frame rate (frames 0, 5, 10, 15 of each 16-frame clip, data.frame_stride) and
    # no temporal down-sampling, as the keyframe models of cascades; the same backbone
    # and temporal layers otherwise. The TSR model (a <J, C, M> model given those frames,
    # the quarter_rate mask: the cond stage's model) fills the frames in between:
    # `lumiere generate --pipeline keyframes-tsr`.
    data.num_frames = 4
    data.frame_stride = 5
    model.temporal.down_levels = (False, False)
  elif stage == "style":
    # The T2I backbone fine-tuned on frames of a styled dataset (`lumiere data build
    # shapes --style outlined`), from the base model it will be interpolated with
    # (train.init_checkpoint: its backbone and the frozen text encoder). `lumiere
    # stylize` interpolates it with that backbone; the temporal layers stay the base's.
    model.kind = "unet2d"
    data.num_frames = 1
    config.train.trainable = ("backbone",)
  return config


def get_sweep(arg: str = "t2v") -> list:
  """What launch/sweep.py expands: a list of {key: [values]}; runs are the product over
  the entries, and keys inside one entry vary together (zip).

    python launch/sweep.py --config shapes_tiny:t2i \
        --workdir-root workdirs/tiny_t2i_sweep --dry-run
  """
  learning_rates = {"train.learning_rate": [1e-4, 3e-4, 1e-3]}
  if (arg or "t2v") == "t2i":
    return [learning_rates, {"model.layers_per_block": [1, 2]}]
  return [learning_rates,
          {"model.temporal.attention_blocks": [1, 2], "model.temporal.num_heads": [4, 8]}]
