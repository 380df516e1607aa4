"""Does a model draw the prompted colour and shape? Single-object prompts, every (colour,
shape) pair twice (42 images or clips), judged by the tracker of `lumiere eval shapes`
(evaluation/tracker.py) per image or, for video models, per clip. Works on text-to-image
models, which `lumiere eval shapes` refuses (it judges motion).

  python benchmarks/t2i_shapes.py --model shapes_t2i
  python benchmarks/t2i_shapes.py --checkpoint RUNS/t2i_b --guidance 3 --sheet t2i.png

Prints colour and shape accuracy, the confusion of prompted against judged shapes, and the
median box fill (area / bounding-box area; the judge calls a square what fills its box
beyond tracker.SQUARE_FILL) and centroid offset (triangles: the centroid below the box
centre) per prompted shape, beside the same figures of rendered ground truth.
"""

import argparse
import itertools

import numpy as np
from PIL import Image

from lumiere_jax import weights
from lumiere_jax.data import shapes
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.evaluation import tracker
from lumiere_jax.pipelines import generate


def prompts() -> list:
  """Each (colour, shape) twice, motions cycling (a t2i model was trained on frames of
  these captions)."""
  pairs = itertools.product(shapes.COLOURS, shapes.SHAPES)
  once = [f"a {c} {s} {m}" for (c, s), m in zip(pairs, itertools.cycle(shapes.MOTIONS))]
  return once + once


def judge(videos, captions) -> dict:
  """Colour and shape accuracy, confusion and median fill / offset per prompted shape."""
  names = list(shapes.COLOURS)
  confusion, measures, colour, shape = {}, {s: [] for s in shapes.SHAPES}, 0, 0
  for video, caption in zip(videos, captions):
    _, name, prompted = caption.split()[:3]
    obj = tracker.track(tracker.colour_coverage(video)[names.index(name)])
    there = obj.present.mean() >= tracker.PRESENT_SHARE
    judged = tracker.judge_shape(obj) if there else None
    colour += there
    shape += there and judged == prompted
    confusion[(prompted, judged)] = confusion.get((prompted, judged), 0) + 1
    if there:
      measures[prompted].append((obj.fill, obj.offset))
  n = len(captions)
  return {"colour": colour / n, "shape": shape / n, "n": n, "confusion": confusion,
          "median": {s: tuple(np.median(np.array(m), axis=0)) if m else (np.nan, np.nan)
                     for s, m in measures.items()}}


def ground_truth(captions, resolution: int) -> list:
  out = []
  for i, caption in enumerate(captions):
    _, colour, shape, *motion = caption.split()
    clip = shapes.render_clip((0, i), resolution, 1, two_object_fraction=0.0,
                              required=(colour, shape, " ".join(motion)))
    out.append(clip.video)
  return out


def write_grid(videos, path, zoom: int = 3) -> None:
  """First frames as a grid: a row per colour, a column per (seed, shape)."""
  frames = np.stack([v[0] for v in videos])  # [2 * colours * shapes, H, W, 3]
  half = len(frames) // 2
  rows = []
  for c in range(len(shapes.COLOURS)):
    cells = [frames[k * half + c * len(shapes.SHAPES) + s] for k in range(2)
             for s in range(len(shapes.SHAPES))]
    rows.append(np.concatenate(cells, axis=1))
  grid = np.concatenate(rows, axis=0).repeat(zoom, 0).repeat(zoom, 1)
  Image.fromarray(grid).save(path)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", help="a shipped model (default: shapes_t2i)")
  source.add_argument("--checkpoint", help="a training workdir (its EMA weights)")
  parser.add_argument("--steps", type=int, default=32)
  parser.add_argument("--guidance", type=float, help="default: the model's")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--sheet", help="a PNG of every sample (first frame)")
  args = parser.parse_args(argv)
  config, params = weights.load_model(checkpoint=args.checkpoint,
                                      name=args.model or (None if args.checkpoint
                                                          else "shapes_t2i"))
  settings = diffusion_config.sampler_settings(config.diffusion, steps=args.steps)
  model = generate.TextToVideo(config, params, settings)
  guidance = config.diffusion.guidance if args.guidance is None else args.guidance
  captions = prompts()
  videos = []
  for start in range(0, len(captions), 8):
    chunk = captions[start:start + 8]
    padded = chunk + [chunk[-1]] * (8 - len(chunk))
    videos.extend(np.asarray(model(padded, args.seed + start, guidance,
                                   negative_prompt=config.diffusion.negative_prompt)
                             )[:len(chunk)])
  print(f"{settings.method}, {settings.steps} steps, guidance {guidance}, seed {args.seed}")
  for label, result in (("model", judge(videos, captions)),
                        ("ground truth", judge(ground_truth(captions,
                                                            config.data.resolution),
                                               captions))):
    print(f"{label}: colour {result['colour']:.2f}  shape {result['shape']:.2f}  "
          f"(n = {result['n']})")
    for (prompted, judged), count in sorted(result["confusion"].items(), key=str):
      print(f"  {prompted:8s} judged {str(judged):8s} {count:3d}")
    for s, (fill, offset) in result["median"].items():
      print(f"  {s:8s} median fill {fill:.2f}  offset {offset:+.2f}")
  if args.sheet:
    write_grid(videos, args.sheet)
    print(f"wrote {args.sheet}: one row per colour ({', '.join(shapes.COLOURS)}), "
          f"columns {', '.join(shapes.SHAPES)}, then the same with the second seed")


if __name__ == "__main__":
  main()
