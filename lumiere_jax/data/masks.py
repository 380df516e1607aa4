"""Mask samplers for the conditional <J, C, M> fine-tune (the `cond` stage).

Convention: M is uint8 [T, H, W, 1] with 1 where pixels are KNOWN (given as conditioning)
and 0 where the model must generate them; the conditioning video is C = video * M (in
model range [-1, 1], so unknown pixels read as 0, mid-grey).

One sampler per Lumiere application, each a pure function of a numpy Generator so a
pipeline seeded per example gets the same mask on every run and after a resume:
  none         nothing known: keeps plain text-to-video working in the fine-tuned model
  first_frame  image-to-video: the whole first frame is known
  first_last   image-to-video between two images: the first and the last frame known
  keyframes    frame interpolation: every k-th frame known (k in 2..T/2), from frame 0
  quarter_rate temporal super-resolution: T // 4 frames known, evenly spaced from the
               first to the last (`keyframe_positions`: 0, 5, 10, 15 of 16), the frames
               a keyframe model at a quarter of the frame rate makes
  inpaint      everything known except one to three boxes, the same boxes at every frame
  outpaint     a central rectangle known, a border of random widths unknown, every frame
  cinemagraph  the first frame known; later frames known outside one region to animate

A cinemagraph's known pixels are the still first frame (only the region moves), so its
training clip is made one: `training_clip` freezes the clip outside the region at its
first frame, and the model learns what `lumiere cinemagraph` asks of it.
"""

from typing import Callable, Mapping

import numpy as np

DEFAULT_MASK_WEIGHTS = {"none": 0.1, "first_frame": 0.2, "first_last": 0.1,
                        "keyframes": 0.05, "quarter_rate": 0.1, "inpaint": 0.15,
                        "outpaint": 0.15, "cinemagraph": 0.15}
KEYFRAME_RATE = 4  # quarter_rate: one frame in 4 known
MAX_BOXES = 3
INPAINT_SIDE = (0.2, 0.5)      # box sides, fractions of the frame's
OUTPAINT_MARGIN = (0.0, 0.3)   # per side, fractions of the frame's
OUTPAINT_MIN_BORDER = 0.15     # at least one side this wide
CINEMAGRAPH_SIDE = (0.3, 0.6)  # the region's sides, fractions of the frame's


def no_mask(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
  del rng
  return np.zeros((num_frames, height, width, 1), np.uint8)


def first_frame_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  mask = no_mask(rng, num_frames, height, width)
  mask[0] = 1
  return mask


def first_last_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  mask = no_mask(rng, num_frames, height, width)
  mask[0] = mask[-1] = 1
  return mask


def keyframes_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  """Frames 0, k, 2k, ... known, k drawn from 2..max(2, T // 2) (a clip of 2 frames or
  fewer knows its first frame only)."""
  mask = no_mask(rng, num_frames, height, width)
  every = int(rng.integers(2, max(2, num_frames // 2) + 1))
  mask[::every] = 1
  return mask


def keyframe_positions(num_frames: int, count: int) -> np.ndarray:
  """`count` frame indices spread evenly from the first frame to the last, both included
  (rounded: 0, 5, 10, 15 for 4 of 16); [0] for a count of 1."""
  if not 1 <= count <= num_frames:
    raise ValueError(f"{count} keyframes of a {num_frames}-frame clip")
  return np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)


def quarter_rate_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  """The frames of a keyframe clip at 1 / KEYFRAME_RATE of the frame rate known."""
  mask = no_mask(rng, num_frames, height, width)
  mask[keyframe_positions(num_frames, max(1, num_frames // KEYFRAME_RATE))] = 1
  return mask


def inpaint_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  frame = np.ones((height, width), np.uint8)
  for _ in range(rng.integers(1, MAX_BOXES + 1)):
    rows, cols = _random_box(rng, height, width, INPAINT_SIDE)
    frame[rows, cols] = 0
  return _every_frame(frame, num_frames)


def outpaint_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  """Margins of 0-30% per side, one of them at least 15% so there is always a border."""
  margins = rng.uniform(*OUTPAINT_MARGIN, size=4)
  margins[rng.integers(4)] = rng.uniform(OUTPAINT_MIN_BORDER, OUTPAINT_MARGIN[1])
  top, bottom = (int(round(m * height)) for m in margins[:2])
  left, right = (int(round(m * width)) for m in margins[2:])
  frame = np.zeros((height, width), np.uint8)
  frame[top:height - bottom, left:width - right] = 1
  return _every_frame(frame, num_frames)


def cinemagraph_mask(rng, num_frames: int, height: int, width: int) -> np.ndarray:
  """The known pixels after frame 0 are the still first frame, at inference and in
  training (`training_clip`)."""
  frame = np.ones((height, width), np.uint8)
  rows, cols = _random_box(rng, height, width, CINEMAGRAPH_SIDE)
  frame[rows, cols] = 0
  mask = _every_frame(frame, num_frames)
  mask[0] = 1
  return mask


SAMPLERS: Mapping[str, Callable] = {"none": no_mask, "first_frame": first_frame_mask,
                                    "first_last": first_last_mask,
                                    "keyframes": keyframes_mask,
                                    "quarter_rate": quarter_rate_mask,
                                    "inpaint": inpaint_mask,
                                    "outpaint": outpaint_mask,
                                    "cinemagraph": cinemagraph_mask}


def training_clip(kind: str, video: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The clip a `kind` mask is trained on: the clip itself, except for a cinemagraph,
  whose known pixels (outside the region, every frame) are its first frame's, so only
  the region moves (uint8 [T, H, W, 3] and mask [T, H, W, 1])."""
  if kind != "cinemagraph":
    return video
  return np.where(mask.astype(bool), video[:1], video)


def check_weights(weights: Mapping[str, float]) -> None:
  """Raises ValueError unless weights name known samplers, are >= 0 and not all zero."""
  unknown = sorted(set(weights) - set(SAMPLERS))
  if unknown:
    raise ValueError(f"unknown mask kinds {unknown}; allowed: {sorted(SAMPLERS)}")
  if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
    raise ValueError(f"mask weights must be >= 0 and not all zero, got {dict(weights)}")


def sample_mask(rng: np.random.Generator, num_frames: int, height: int, width: int,
                weights: Mapping[str, float] = DEFAULT_MASK_WEIGHTS) -> tuple:
  """(kind, uint8 mask [T, H, W, 1]) with kind drawn with the given relative weights."""
  kinds = sorted(weights)
  probabilities = np.array([weights[k] for k in kinds], np.float64)
  kind = kinds[rng.choice(len(kinds), p=probabilities / probabilities.sum())]
  return kind, SAMPLERS[kind](rng, num_frames, height, width)


def _random_box(rng, height: int, width: int, side_range: tuple) -> tuple:
  """Row and column slices of a box whose sides are the given fractions of the frame."""
  box_h = max(1, int(round(rng.uniform(*side_range) * height)))
  box_w = max(1, int(round(rng.uniform(*side_range) * width)))
  top = rng.integers(0, height - box_h + 1)
  left = rng.integers(0, width - box_w + 1)
  return slice(top, top + box_h), slice(left, left + box_w)


def _every_frame(frame: np.ndarray, num_frames: int) -> np.ndarray:
  return np.repeat(frame[None, :, :, None], num_frames, axis=0)
