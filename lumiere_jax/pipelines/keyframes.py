"""The cascade Lumiere argues against: keyframes, then temporal super-resolution (TSR).

A keyframe model (shapes_tiny:keyframes) generates K frames at a fraction of the frame
rate; a <J, C, M> conditional model (the cond stage's, trained with the quarter_rate
mask among others) is given them at their positions in a T-frame clip (data/masks.py
`keyframe_positions`: 0, 5, 10, 15 for 4 of 16) and fills the frames in between. The
STUNet makes all T frames in one pass; here the motion between keyframes is decided by
a model that sees only its two ends, which is where Lumiere says cascades go wrong.
"""

from typing import Sequence

import numpy as np

from lumiere_jax.data import masks
from lumiere_jax.errors import UserError
from lumiere_jax.pipelines import applications
from lumiere_jax.pipelines import generate as generate_pipeline

NAME = "keyframes-tsr"
PIPELINES = ("stunet", NAME)


def check_models(keyframe_config, tsr_config) -> None:
  """A K-frame text-to-video model whose frames the TSR model's clips can hold."""
  generate_pipeline.check_generation_config(keyframe_config)
  applications.check_conditional_config(tsr_config, "temporal super-resolution")
  keys = generate_pipeline.video_shape(keyframe_config)
  clip = applications.clip_shape(tsr_config)
  if keys[1:] != clip[1:]:
    raise UserError(f"the keyframe model makes {keys[2]}x{keys[1]} frames, the TSR model "
                    f"{clip[2]}x{clip[1]}")
  if not 2 <= keys[0] < clip[0]:
    raise UserError(f"the keyframe model makes {keys[0]} frames; a TSR model of "
                    f"{clip[0]}-frame clips needs 2 to {clip[0] - 1}")


def keyframe_condition(keyframes: np.ndarray, num_frames: int
                       ) -> applications.Condition:
  """uint8 keyframes [N, K, H, W, 3] -> the TSR model's Condition: clips [N, T, H, W, 3]
  holding them at `masks.keyframe_positions(T, K)`, those frames known."""
  count, k = keyframes.shape[:2]
  positions = masks.keyframe_positions(num_frames, k)
  clips = np.zeros((count, num_frames) + keyframes.shape[2:], np.uint8)
  clips[:, positions] = keyframes
  known = np.zeros((num_frames,) + keyframes.shape[2:4] + (1,), np.uint8)
  known[positions] = 1
  return applications.Condition(clips, known)


class KeyframesTSR:
  """Call it with prompts like pipelines.generate.TextToVideo: uint8 [N, T, H, W, 3].
  `keyframes` is a TextToVideo of the keyframe model, `tsr` a ConditionalGenerator; each
  samples with its own settings, guidance `guidance_scale` for both."""

  def __init__(self, keyframes: generate_pipeline.TextToVideo,
               tsr: applications.ConditionalGenerator):
    check_models(keyframes.config, tsr.config)
    self.keyframes, self.tsr = keyframes, tsr
    self.num_frames = applications.clip_shape(tsr.config)[0]
    self.positions = masks.keyframe_positions(self.num_frames, keyframes.video_shape[0])

  def __call__(self, prompts: Sequence[str], seed: int, guidance_scale: float,
               negative_prompt: str = "") -> np.ndarray:
    keys = self.keyframes(prompts, seed, guidance_scale, negative_prompt=negative_prompt)
    condition = keyframe_condition(keys, self.num_frames)
    return self.tsr(prompts, condition, seed, guidance_scale, negative_prompt)
