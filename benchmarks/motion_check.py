"""Does a generated shapes video move the way its prompt says, in its colour? Numbers per video.

Reads a `lumiere generate --out-dir` folder (manifest.jsonl + one .npy per prompt), finds
the object in each frame (pixels whose brightest channel exceeds --threshold: the shapes
dataset has a near-black background and saturated objects), and reports its centroid
displacement from the first to the last frame (x right, y down, in pixels), the area
ratio last / first, and whether that matches the prompt's motion:

  moving left/right/up/down  displacement of at least --min-travel pixels along the
                             named direction, more than along the other axis
  growing / shrinking        area ratio above / below 1 by at least --min-growth
  standing still             displacement under --min-travel and area ratio within it
  bouncing around            not judged (its net displacement can be anything)

and the palette colour (data/shapes.py) nearest to the object's mean colour, against the
first colour word of the prompt. A video with no object pixels matches nothing.

How steadily it moves: `max_step`, the largest centroid jump between consecutive frames
(pixels), and `straightness`, net displacement / path length (1 for a steady straight
move; near 0 for a jittering object). The dataset moves its objects by under a pixel and
a half a frame, straight; a model that holds a frame for a while and then jumps shows
steps of several pixels.

  python benchmarks/motion_check.py samples/t2v [--json motion.json]
"""

import argparse
import json
import pathlib
import sys

import numpy as np

from lumiere_jax.data.shapes import COLOURS

DIRECTIONS = {"moving left": (-1, 0), "moving right": (1, 0), "moving up": (0, -1),
              "moving down": (0, 1)}


def weighted_track(weights: np.ndarray) -> tuple:
  """weights [T, H, W] >= 0 -> (centroids [T, 2] as (x, y), total weight [T]); a frame
  with no weight gets centroid (0, 0)."""
  ys, xs = np.mgrid[:weights.shape[1], :weights.shape[2]]
  mass = weights.sum(axis=(1, 2))
  safe = np.where(mass > 0, mass, 1.0)
  return np.stack([(weights * xs).sum(axis=(1, 2)) / safe,
                   (weights * ys).sum(axis=(1, 2)) / safe], axis=-1), mass


def object_track(video: np.ndarray, threshold: int) -> tuple:
  """(centroids [T, 2] as (x, y), areas [T]) of the bright pixels of each frame."""
  return weighted_track((video.max(axis=-1) > threshold).astype(float))


def nearest_colour(video: np.ndarray, threshold: int):
  """The palette name nearest to the mean colour of the object pixels (None if none)."""
  pixels = video[video.max(axis=-1) > threshold].astype(float)
  if not len(pixels):
    return None
  mean = pixels.mean(axis=0)
  return min(COLOURS, key=lambda name: np.sum((np.array(COLOURS[name]) - mean) ** 2))


def steadiness(centroids: np.ndarray) -> tuple:
  """centroids [T, 2] -> (largest step between consecutive frames, net / path length)."""
  steps = np.linalg.norm(np.diff(centroids, axis=0), axis=-1)
  path = float(steps.sum())
  net = float(np.linalg.norm(centroids[-1] - centroids[0]))
  return float(steps.max(initial=0.0)), (net / path if path > 0 else 1.0)


def judge(prompt: str, displacement: np.ndarray, area_ratio: float, min_travel: float,
          min_growth: float):
  """True/False if the prompt's motion is (not) what the video does; None if not judged."""
  for phrase, direction in DIRECTIONS.items():
    if prompt.endswith(phrase):
      along = float(np.dot(displacement, direction))
      across = abs(float(displacement[1 - np.flatnonzero(direction)[0]]))
      return along >= min_travel and along > across
  if prompt.endswith("growing"):
    return area_ratio >= 1 + min_growth
  if prompt.endswith("shrinking"):
    return area_ratio <= 1 / (1 + min_growth)
  if prompt.endswith("standing still"):
    return (float(np.linalg.norm(displacement)) < min_travel
            and 1 / (1 + min_growth) < area_ratio < 1 + min_growth)
  return None


def check(out_dir: pathlib.Path, threshold: int, min_travel: float, min_growth: float) -> list:
  rows = []
  for line in (out_dir / "manifest.jsonl").read_text().splitlines():
    entry = json.loads(line)
    video = np.load(out_dir / entry["path"])
    centroids, areas = object_track(video, threshold)
    displacement = centroids[-1] - centroids[0]
    ratio = float(areas[-1] / max(areas[0], 1.0))
    colour = nearest_colour(video, threshold)
    empty = not areas.all()
    max_step, straightness = steadiness(centroids)
    rows.append(dict(prompt=entry["prompt"], dx=round(float(displacement[0]), 2),
                     dy=round(float(displacement[1]), 2), area_ratio=round(ratio, 2),
                     max_step=round(max_step, 2), straightness=round(straightness, 2),
                     object_in_every_frame=not empty,
                     colour=colour, colour_matches=colour == entry["prompt"].split()[1],
                     matches=False if empty else judge(entry["prompt"], displacement, ratio,
                                                       min_travel, min_growth)))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir", type=pathlib.Path)
  parser.add_argument("--threshold", type=int, default=100)
  parser.add_argument("--min-travel", type=float, default=3.0, help="pixels")
  parser.add_argument("--min-growth", type=float, default=0.25)
  parser.add_argument("--json", type=pathlib.Path)
  args = parser.parse_args(argv)
  if not (args.out_dir / "manifest.jsonl").is_file():
    print(f"motion_check: {args.out_dir} has no manifest.jsonl (a lumiere generate "
          "--out-dir folder)", file=sys.stderr)
    return 2
  rows = check(args.out_dir, args.threshold, args.min_travel, args.min_growth)
  print(f"{'prompt':40s} {'dx':>7s} {'dy':>7s} {'area':>6s} {'step':>5s} {'straight':>8s}  "
        f"{'colour':8s} motion")
  for r in rows:
    print(f"{r['prompt']:40s} {r['dx']:7.2f} {r['dy']:7.2f} {r['area_ratio']:6.2f} "
          f"{r['max_step']:5.2f} {r['straightness']:8.2f}  {str(r['colour']):8s} "
          f"{'-' if r['matches'] is None else r['matches']}")
  judged = [r["matches"] for r in rows if r["matches"] is not None]
  print(f"{sum(judged)}/{len(judged)} judged videos move as prompted; "
        f"{sum(r['colour_matches'] for r in rows)}/{len(rows)} have the prompted colour")
  whole = [r for r in rows if r["object_in_every_frame"]]
  if whole:
    print(f"{len(whole)}/{len(rows)} have an object in every frame; their median largest "
          f"step {np.median([r['max_step'] for r in whole]):.2f} px, median straightness "
          f"{np.median([r['straightness'] for r in whole]):.2f}")
  if args.json:
    args.json.write_text(json.dumps(rows, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
