"""The synthetic "shapes" clips: a pure, deterministic numpy renderer (seed -> clip).

Follows the spec in DESIGN.md. Geometry is in continuous pixel units on an R x R canvas,
x to the right and y downwards (so "moving up" decreases y); pixel (i, j) covers
[j, j + 1] x [i, i + 1]. An object is described by its centre and its half-extent h
(circle: radius h; square: half the side; triangle, pointing up: apex at (cx, cy - h),
base corners at (cx -+ h, cy + h), i.e. centre = centre of its bounding box).

Anti-aliasing is box filtering: shapes are sampled at SUPERSAMPLE x SUPERSAMPLE points per
pixel (supersampling) and each pixel averages its samples (area downsampling), so a fully
covered pixel has exactly its palette colour and edge pixels blend towards black.

Styles (the `style` stage's data, for stylized generation): "plain" fills each shape with
its colour; "outlined" draws only a band along its edge (STYLE_LINE of the canvas wide);
"striped" fills it with horizontal stripes that move with it (period STYLE_STRIPES of the
canvas). The geometry, captions and tracks are the same in every style.

Every track is sampled so that its bounding box stays inside the canvas at every frame,
and the two objects of a two-object clip never overlap (their boxes keep a one-pixel gap),
so captions always describe what is visible and tests can measure each object by colour.
"""

import dataclasses
from typing import Sequence

import numpy as np

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 200, 215),
    "white": (235, 235, 235),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle")
LINEAR_MOTIONS = {"moving left": (-1, 0), "moving right": (1, 0),
                  "moving up": (0, -1), "moving down": (0, 1)}
MOTIONS = (*LINEAR_MOTIONS, "bouncing around", "growing", "shrinking", "standing still")
RESOLUTIONS = (32, 64, 128)
MAX_FRAMES = 80
MAX_OBJECTS = 2
SUPERSAMPLE = 8

HALF_EXTENT_RANGE = (0.12, 0.20)   # fraction of R
TRAVEL_RANGE = (0.25, 0.60)        # linear motions: distance over the clip, fraction of R
BOUNCE_TRAVEL_RANGE = (1.2, 1.8)   # per-axis path length, in units of the free range
MIN_GROWTH = 1.6                   # growing/shrinking: size ratio over the clip
OBJECT_GAP = 1.0                   # pixels between the boxes of two objects
MAX_SCENE_TRIES = 1000
STYLES = ("plain", "outlined", "striped")
STYLE_LINE = 1 / 20                # "outlined": the band's width, fraction of R
STYLE_STRIPES = 1 / 8              # "striped": one stripe and one gap, fraction of R


@dataclasses.dataclass(frozen=True)
class Track:
  """One object over the clip: what it is and where it is at every frame."""
  colour: str
  shape: str
  motion: str
  centres: np.ndarray       # float64 [T, 2], (x, y) in pixels
  half_extents: np.ndarray  # float64 [T], pixels
  bounces: int = 0          # wall reflections between the first and last frame

  @property
  def phrase(self) -> str:
    return f"a {self.colour} {self.shape} {self.motion}"


@dataclasses.dataclass(frozen=True)
class Clip:
  video: np.ndarray  # uint8 [T, R, R, 3]
  caption: str
  tracks: tuple      # of Track, in drawing (and caption) order


def render_clip(seed: int | Sequence[int], resolution: int = 32, num_frames: int = 16,
                two_object_fraction: float = 0.5, excluded: frozenset = frozenset(),
                required: tuple | None = None, style: str = "plain") -> Clip:
  """Renders the clip that `seed` determines.

  `excluded` holds (colour, shape, motion) triples that no object may have (held-out
  combinations); `required`, one such triple, is forced onto the first object (how the
  held-out split is made). `style` changes how the objects are drawn, never where.
  """
  check_size(resolution, num_frames)
  check_style(style)
  rng = np.random.default_rng(seed)
  tracks = sample_scene(rng, resolution, num_frames, two_object_fraction, excluded, required)
  return Clip(render_video(tracks, resolution, style), caption(tracks), tracks)


def check_style(style: str) -> None:
  if style not in STYLES:
    raise ValueError(f"style {style!r} is not supported; use one of {STYLES}")


def check_size(resolution: int, num_frames: int) -> None:
  """Raises ValueError for sizes outside the spec (the CLI turns it into one line)."""
  if resolution not in RESOLUTIONS:
    raise ValueError(f"resolution {resolution} is not supported; use one of {RESOLUTIONS}")
  if not 1 <= num_frames <= MAX_FRAMES:
    raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {num_frames}")


def caption(tracks: Sequence[Track]) -> str:
  return " and ".join(track.phrase for track in tracks)


def all_captions() -> list:
  """Every caption the dataset can contain (for precomputing text embeddings)."""
  phrases = [(c, f"a {c} {s} {m}") for c in COLOUR_NAMES for s in SHAPES for m in MOTIONS]
  pairs = [f"{a} and {b}" for ca, a in phrases for cb, b in phrases if ca != cb]
  return [phrase for _, phrase in phrases] + pairs


def sample_scene(rng: np.random.Generator, resolution: int, num_frames: int,
                 two_object_fraction: float, excluded: frozenset = frozenset(),
                 required: tuple | None = None) -> tuple:
  """One or two non-overlapping tracks; two objects get different colours."""
  num_objects = 2 if rng.random() < two_object_fraction else 1
  for _ in range(MAX_SCENE_TRIES):
    first = _sample_track(rng, resolution, num_frames, excluded, required, ())
    if num_objects == 1:
      return (first,)
    second = _sample_track(rng, resolution, num_frames, excluded, None, (first.colour,))
    if not _overlap(first, second):
      return (first, second)
  raise RuntimeError("could not place two non-overlapping objects")  # never seen in practice


def _sample_track(rng, resolution, num_frames, excluded, required, taken_colours) -> Track:
  if required is not None:
    colour, shape, motion = required
  else:
    while True:
      colour = str(rng.choice([c for c in COLOUR_NAMES if c not in taken_colours]))
      shape = str(rng.choice(SHAPES))
      motion = str(rng.choice(MOTIONS))
      if (colour, shape, motion) not in excluded:
        break
  progress = _progress(num_frames)
  centres, half_extents, bounces = _sample_motion(rng, motion, resolution, progress)
  return Track(colour, shape, motion, centres, half_extents, bounces)


def _progress(num_frames: int) -> np.ndarray:
  """Fraction of the clip elapsed at each frame: 0 at the first frame, 1 at the last."""
  return np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)


def _sample_motion(rng, motion: str, resolution: int, progress: np.ndarray):
  lo, hi = (f * resolution for f in HALF_EXTENT_RANGE)
  if motion in ("growing", "shrinking"):
    factor = rng.uniform(MIN_GROWTH, hi / lo)
    small = rng.uniform(lo, hi / factor)
    sizes = (small, small * factor) if motion == "growing" else (small * factor, small)
    half_extents = sizes[0] + (sizes[1] - sizes[0]) * progress
    centre = rng.uniform(max(sizes), resolution - max(sizes), size=2)
    return np.tile(centre, (len(progress), 1)), half_extents, 0
  h = rng.uniform(lo, hi)
  half_extents = np.full(len(progress), h)
  if motion in LINEAR_MOTIONS:
    return _linear_track(rng, LINEAR_MOTIONS[motion], h, resolution, progress), half_extents, 0
  if motion == "bouncing around":
    centres, bounces = _bouncing_track(rng, h, resolution, progress)
    return centres, half_extents, bounces
  centre = rng.uniform(h, resolution - h, size=2)
  return np.tile(centre, (len(progress), 1)), half_extents, 0


def _linear_track(rng, direction, h, resolution, progress) -> np.ndarray:
  """Constant speed along one axis, fully visible from the first to the last frame."""
  travel = rng.uniform(*TRAVEL_RANGE) * resolution
  start = rng.uniform(h, resolution - h - travel)  # along the direction of travel
  across = rng.uniform(h, resolution - h)
  axis = 0 if direction[0] else 1
  sign = direction[axis]
  along = start + travel * progress
  if sign < 0:
    along = resolution - along
  centres = np.empty((len(progress), 2))
  centres[:, axis] = along
  centres[:, 1 - axis] = across
  return centres


def _bouncing_track(rng, h, resolution, progress):
  """45-degree diagonal at constant speed, reflecting off the walls.

  Each axis travels more than its free range (R - 2h) over the clip, so the object hits
  a wall at least once on both axes. Reflection is folding the unbounded path back into
  [h, R - h].
  """
  free = resolution - 2 * h
  travel = rng.uniform(*BOUNCE_TRAVEL_RANGE) * free
  start = rng.uniform(0, free, size=2)
  signs = rng.choice((-1.0, 1.0), size=2)
  unfolded = start + signs * travel * progress[:, None]      # [T, 2] in [0, free] units
  folded = np.abs((unfolded + free) % (2 * free) - free)     # triangle wave
  crossings = np.floor(unfolded[-1] / free) - np.floor(start / free)
  bounces = int(np.abs(crossings).sum()) if len(progress) > 1 else 0
  return h + folded, bounces


def _overlap(a: Track, b: Track) -> bool:
  """True if the bounding boxes of the two tracks come within OBJECT_GAP at any frame."""
  distance = np.abs(a.centres - b.centres)                         # [T, 2]
  reach = (a.half_extents + b.half_extents)[:, None] + OBJECT_GAP  # [T, 1]
  return bool(np.any(np.all(distance < reach, axis=1)))


def render_video(tracks: Sequence[Track], resolution: int, style: str = "plain") -> np.ndarray:
  """uint8 [T, R, R, 3]: each object's coverage times its colour, over black.

  Coverage is the share of a pixel's SUPERSAMPLE x SUPERSAMPLE samples inside the shape
  (for a style, inside its drawn part). Adding the objects is exact because no pixel
  touches two of them (OBJECT_GAP >= 1).
  """
  num_frames = len(tracks[0].centres)
  frames = np.zeros((num_frames, resolution, resolution, 3), np.float32)
  for t in range(num_frames):
    for track in tracks:
      rows, cols, coverage = _coverage(track, t, resolution, style)
      frames[t, rows, cols] += coverage[..., None] * np.float32(COLOURS[track.colour])
  return np.rint(frames).astype(np.uint8)


def _coverage(track: Track, t: int, resolution: int, style: str = "plain"):
  """The pixel window around the object at frame t and its coverage there, in [0, 1]."""
  (cx, cy), h = track.centres[t], track.half_extents[t]
  y0, y1 = _pixel_span(cy, h, resolution)
  x0, x1 = _pixel_span(cx, h, resolution)
  offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
  dy = (np.arange(y0, y1)[:, None] + offsets).reshape(-1, 1) - cy
  dx = (np.arange(x0, x1)[:, None] + offsets).reshape(1, -1) - cx
  inside = _inside(track.shape, dx, dy, h)
  if style == "outlined":  # the shape minus the same shape one line width smaller
    inside &= ~_inside(track.shape, dx, dy, h - STYLE_LINE * resolution)
  elif style == "striped":  # stripes counted from the object's top edge
    inside &= np.floor((dy + h) / (STYLE_STRIPES * resolution / 2)) % 2 == 0
  blocks = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE)
  return slice(y0, y1), slice(x0, x1), blocks.mean(axis=(1, 3), dtype=np.float32)


def _inside(shape: str, dx, dy, h: float) -> np.ndarray:
  """Which sample offsets (dx, dy) from the centre fall inside `shape` of half-extent h
  (nothing for h <= 0)."""
  inside = (np.abs(dx) <= h) & (np.abs(dy) <= h) & (h > 0)
  if shape == "circle":
    inside &= dx * dx + dy * dy <= h * h
  elif shape == "triangle":  # half-width grows from 0 at the apex (dy = -h) to h
    inside &= np.abs(dx) <= (dy + h) / 2
  return inside


def _pixel_span(centre: float, h: float, resolution: int) -> tuple:
  return max(int(np.floor(centre - h)), 0), min(int(np.ceil(centre + h)), resolution)
