"""Tracking the objects of a shapes video by colour, and judging them against a caption.

Every object of the shapes data has one palette colour (data/shapes.py) and anti-aliased
edges that blend towards black, so a pixel p of an object of colour c is p ~ a c with a
coverage a in [0, 1]. Each pixel is given the palette colour that explains it best
(smallest |p - a c| over colours, a the least-squares coverage), and its coverage; an
object is the coverage of its colour over the frame. Two objects of a caption always
have different colours, so each named object is found on its own.

From an object's track (centroid, area, bounding box per frame) come the judgements:
  colour  the object is there (area >= MIN_AREA px in at least PRESENT_SHARE of frames,
          as one object: its colour's largest 8-connected blob holds at least ONE_BLOB
          of the coverage, so a spurious second object of the same colour is not it)
  shape   triangle: centroid well below the box centre (the apex points up); square: the
          box is filled; circle: otherwise
  motion  moving left/right/up/down: displacement along the axis >= MIN_TRAVEL R and
          twice the displacement across it; growing/shrinking: area ratio last/first
          beyond GROWTH; standing still: displacement < STILL R and area ratio within
          GROWTH; bouncing around: path length >= MIN_TRAVEL R and the centroid turns back
          on some axis after moving BOUNCE_LEG R one way and then BOUNCE_LEG R the other
          (a turn needs real legs on both sides: a jittering object turns back every
          frame by a pixel or so, and is not bouncing)
and the temporal-consistency figures of one object: area stability (std / mean over
frames), centroid jitter (mean |second difference|, px) and the largest step between
frames (px). An object is *lost midway* when it is there in one half of the clip and not
in the other (present in at least PRESENT_SHARE of one half's frames and at most
1 - PRESENT_SHARE of the other's): the object turned into another colour, or vanished,
or appeared late. Ground truth never is.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from lumiere_jax.data import shapes

PALETTE = np.array(list(shapes.COLOURS.values()), np.float32)  # [K, 3]
MIN_COVERAGE = 0.35   # a pixel darker than this share of its colour is background
MAX_RESIDUAL = 45.0   # |p - a c| above this (0..255 units): not this palette colour
MIN_AREA = 3.0        # px of coverage for an object to be there in a frame
ONE_BLOB = 0.8        # share of that coverage in one 8-connected blob (1.0 in the data)
PRESENT_SHARE = 0.75  # of frames
MIN_TRAVEL = 0.15     # of the resolution
STILL = 0.08          # of the resolution
GROWTH = 1.3          # area ratio
BOUNCE_LEG = 0.1      # of the resolution, on each side of a turn
TRIANGLE_OFFSET = 0.07  # centroid below the box centre, share of the box height
SQUARE_FILL = 0.86    # area / box area
# What the judgements above depend on, for reports ("scores carry their settings").
SETTINGS = {"min_coverage": MIN_COVERAGE, "max_residual": MAX_RESIDUAL, "min_area_px": MIN_AREA,
            "one_blob": ONE_BLOB, "present_share": PRESENT_SHARE, "min_travel": MIN_TRAVEL,
            "still": STILL, "growth": GROWTH, "bounce_leg": BOUNCE_LEG, "triangle_offset": TRIANGLE_OFFSET,
            "square_fill": SQUARE_FILL}
RIGID = ("moving left", "moving right", "moving up", "moving down", "bouncing around",
         "standing still")


def colour_coverage(video: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 [K, T, H, W]: each pixel's coverage of the palette
  colour that explains it best (0 for the other colours and for background)."""
  p = video.astype(np.float32)[None]                                  # [1, T, H, W, 3]
  c = PALETTE[:, None, None, None, :]                                 # [K, 1, 1, 1, 3]
  alpha = np.clip((p * c).sum(-1) / (c * c).sum(-1), 0.0, 1.0)       # [K, T, H, W]
  residual = np.linalg.norm(p - alpha[..., None] * c, axis=-1)
  best = np.argmin(residual, axis=0)                                  # [T, H, W]
  keep = np.take_along_axis(residual, best[None], 0)[0] <= MAX_RESIDUAL
  out = np.zeros_like(alpha)
  chosen = np.take_along_axis(alpha, best[None], 0)[0]
  for k in range(len(PALETTE)):
    out[k] = np.where((best == k) & keep & (chosen >= MIN_COVERAGE), chosen, 0.0)
  return out


@dataclasses.dataclass(frozen=True)
class ObjectTrack:
  centroids: np.ndarray  # [T, 2] (x, y) px; NaN where absent
  areas: np.ndarray      # [T] px of coverage
  fill: float            # median area / box area over present frames
  offset: float          # median (centroid y - box centre y) / box height
  blob_share: np.ndarray  # [T] share of the coverage in its largest 8-connected blob

  @property
  def present(self) -> np.ndarray:
    return (self.areas >= MIN_AREA) & (self.blob_share >= ONE_BLOB)


def largest_blob_share(coverage: np.ndarray) -> float:
  """Share of a frame's coverage [H, W] in its largest 8-connected blob (1 if empty)."""
  labels, count = ndimage.label(coverage > 0, structure=np.ones((3, 3)))
  total = coverage.sum()
  if count == 0 or total <= 0:
    return 1.0
  return float(np.max(ndimage.sum(coverage, labels, range(1, count + 1))) / total)


def track(coverage: np.ndarray) -> ObjectTrack:
  """One colour's coverage [T, H, W] -> its track."""
  t, h, w = coverage.shape
  ys, xs = np.mgrid[:h, :w]
  areas = coverage.sum(axis=(1, 2))
  safe = np.where(areas > 0, areas, 1.0)
  cx = (coverage * xs).sum(axis=(1, 2)) / safe
  cy = (coverage * ys).sum(axis=(1, 2)) / safe
  blob_share = np.array([largest_blob_share(frame) for frame in coverage], np.float32)
  present = (areas >= MIN_AREA) & (blob_share >= ONE_BLOB)
  centroids = np.where(present[:, None], np.stack([cx, cy], -1), np.nan)
  fills, offsets = [], []
  for f in np.flatnonzero(present):
    rows = np.flatnonzero((coverage[f] > 0.5).any(axis=1))
    cols = np.flatnonzero((coverage[f] > 0.5).any(axis=0))
    if len(rows) < 2 or len(cols) < 2:
      continue
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    fills.append(areas[f] / (height * width))
    offsets.append((cy[f] + 0.5 - (rows[0] + rows[-1] + 1) / 2) / height)
  fill = float(np.median(fills)) if fills else 0.0
  offset = float(np.median(offsets)) if offsets else 0.0
  return ObjectTrack(centroids, areas, fill, offset, blob_share)


def judge_shape(obj: ObjectTrack) -> str:
  if obj.offset > TRIANGLE_OFFSET:
    return "triangle"
  return "square" if obj.fill > SQUARE_FILL else "circle"


def _ends(values: np.ndarray) -> tuple:
  """Mean of the first and of the last two present frames (robust to one odd frame)."""
  valid = values[~np.isnan(values).any(axis=-1)] if values.ndim > 1 else values
  return valid[:2].mean(axis=0), valid[-2:].mean(axis=0)


def judge_motion(obj: ObjectTrack, motion: str, resolution: int) -> bool:
  if obj.present.mean() < PRESENT_SHARE:
    return False
  first, last = _ends(obj.centroids)
  dx, dy = last - first
  areas = obj.areas[obj.present]
  growth = areas[-2:].mean() / max(areas[:2].mean(), 1e-6)
  if motion in shapes.LINEAR_MOTIONS:
    ux, uy = shapes.LINEAR_MOTIONS[motion]
    along, across = (dx * ux, abs(dy)) if ux else (dy * uy, abs(dx))
    return bool(along >= MIN_TRAVEL * resolution and along >= 2 * across)
  if motion == "growing":
    return bool(growth >= GROWTH)
  if motion == "shrinking":
    return bool(growth <= 1 / GROWTH)
  if motion == "standing still":
    return bool(np.hypot(dx, dy) < STILL * resolution and 1 / GROWTH < growth < GROWTH)
  if motion == "bouncing around":
    path = obj.centroids[obj.present]
    length = np.linalg.norm(np.diff(path, axis=0), axis=-1).sum()
    leg = BOUNCE_LEG * resolution
    return bool(length >= MIN_TRAVEL * resolution
                and max(turns(path[:, 0], leg), turns(path[:, 1], leg)) >= 1)
  raise ValueError(f"unknown motion {motion!r}")


def turns(values: np.ndarray, leg: float) -> int:
  """How often a 1-D track turns back after moving at least `leg` one way, counting
  only turns followed by at least `leg` the other way (hysteresis): wall reflections of
  a bouncing object count, wobbles smaller than `leg` do not."""
  count, direction, low, high, extreme = 0, 0, values[0], values[0], values[0]
  for v in values[1:]:
    if direction == 0:  # not yet moved `leg` from everything seen so far
      low, high = min(low, v), max(high, v)
      if v - low >= leg or high - v >= leg:
        direction, extreme = (1 if v - low >= leg else -1), v
    elif (v - extreme) * direction >= 0:
      extreme = v
    elif abs(v - extreme) >= leg:
      count, direction, extreme = count + 1, -direction, v
  return count


def halves(obj: ObjectTrack) -> dict:
  """The share of frames of each half of the clip in which the object is there, and
  whether it is lost midway (there in one half, not in the other)."""
  first, second = (float(half.mean()) for half in np.array_split(obj.present, 2))
  low, high = sorted((first, second))
  return {"present_halves": [first, second],
          "lost_midway": bool(high >= PRESENT_SHARE and low <= 1 - PRESENT_SHARE)}


def consistency(obj: ObjectTrack, motion: str) -> dict:
  """Temporal-consistency figures of one present object (NaN where not defined)."""
  path = obj.centroids[obj.present]
  steps = np.linalg.norm(np.diff(path, axis=0), axis=-1) if len(path) > 1 else np.zeros(0)
  jitter = (np.linalg.norm(np.diff(path, 2, axis=0), axis=-1).mean()
            if len(path) > 2 else np.nan)
  areas = obj.areas[obj.present]
  stability = areas.std() / areas.mean() if motion in RIGID and len(areas) else np.nan
  return {"area_stability": float(stability), "centroid_jitter": float(jitter),
          "max_step": float(steps.max()) if len(steps) else np.nan}


def background_flicker(video: np.ndarray, coverage: np.ndarray, margin: int = 2) -> float:
  """Mean |frame t+1 - frame t| (0..255) over pixels that no object covers, within
  `margin` px, in either frame: noise and flashes outside the objects."""
  covered = coverage.sum(axis=0) > 0                                   # [T, H, W]
  bright = video.max(axis=-1) > 255 * MIN_COVERAGE
  near = _dilate(covered | bright, margin)
  background = ~(near[1:] | near[:-1])
  change = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=-1)
  return float(change[background].mean()) if background.any() else np.nan


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
  """Square dilation of boolean [..., H, W] by `radius` px (edges padded, not wrapped:
  an object at the left edge does not reach the right one)."""
  h, w = mask.shape[-2:]
  pad = [(0, 0)] * (mask.ndim - 2) + [(radius, radius)] * 2
  padded = np.pad(mask, pad)
  out = np.zeros_like(mask)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out |= padded[..., dy:dy + h, dx:dx + w]
  return out


def parse_caption(caption: str) -> list:
  """'a red circle moving left and a ...' -> [(colour, shape, motion), ...]; words the
  grammar does not know give None entries (judged wrong)."""
  objects = []
  for phrase in caption.split(" and "):
    words = phrase.split()
    if len(words) < 4 or words[0] != "a":
      objects.append(None)
      continue
    colour, shape, motion = words[1], words[2], " ".join(words[3:])
    known = (colour in shapes.COLOURS and shape in shapes.SHAPES and motion in shapes.MOTIONS)
    objects.append((colour, shape, motion) if known else None)
  return objects


def judge_video(video: np.ndarray, caption: str) -> list:
  """Per object of the caption: {colour, shape, motion (bools), judged_shape, motion name,
  and its consistency figures}, plus the video's background flicker on each."""
  coverage = colour_coverage(video)
  flicker = background_flicker(video, coverage)
  names = list(shapes.COLOURS)
  results = []
  for spec in parse_caption(caption):
    if spec is None:
      results.append({"colour": False, "shape": False, "motion": False, "name": None,
                      "flicker": flicker, "present_halves": [0.0, 0.0], "lost_midway": False})
      continue
    colour, shape, motion = spec
    obj = track(coverage[names.index(colour)])
    there = bool(obj.present.mean() >= PRESENT_SHARE)
    judged = judge_shape(obj) if there else None
    result = {"name": motion, "colour": there, "shape": there and judged == shape,
              "judged_shape": judged,
              "motion": there and judge_motion(obj, motion, video.shape[1]),
              "flicker": flicker, **halves(obj)}
    result.update(consistency(obj, motion) if there else
                  {"area_stability": np.nan, "centroid_jitter": np.nan, "max_step": np.nan})
    results.append(result)
  return results
