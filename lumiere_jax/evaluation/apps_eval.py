"""`lumiere eval apps`: the conditional model's applications on held-out shapes prompts.

Each held-out prompt of `lumiere eval shapes` (shapes_eval.held_out_items) comes with its
rendered ground-truth clip, from which each application builds its request:
  animate      frame 0 of the clip is the image; the prompt says how it moves. Reported:
               frame 0's error against the image (mean and largest, 0-255), the mean
               colour error (|mean RGB of frame 0 - mean RGB of the image|, averaged over
               channels), and the judge's colour / shape / motion accuracy of the clips.
  inpaint      every pixel an object of the clip covers at any frame, grown by
               INPAINT_GROW pixels, is to fill, at every frame (what is left is
               background): the model must draw the prompted objects inside. Reported: the
               largest and mean change of the known pixels (0 with `replace`), the seam
               error (mean |output - ground truth| on the band of SEAM pixels inside the
               region's edge, background there in the ground truth) and the judge's
               accuracy of the objects.
  cinemagraph  frame 0 is the image; the box around its objects, grown by
               CINEMAGRAPH_GROW pixels, moves; the rest must stay. Reported: the change
               outside the region (largest and mean over frames of the mean |x_t - x_0|)
               and inside it.
Known pixels are handled as --known-pixels / --dilate say (default: the model's
diffusion.known_pixels and known_dilation), so both choices are measured alike.
"""

import os
import pathlib
from typing import Callable

import numpy as np
import tqdm

from lumiere_jax import weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import shapes_eval
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.pipelines import applications, generate

HELP = "The conditional model's applications (animate, inpaint, cinemagraph) on held-out "\
       "shapes prompts."
APPLICATIONS = ("animate", "inpaint", "cinemagraph")
OBJECT_LEVEL = 40      # a ground-truth pixel brighter than this (any channel) is an object's
INPAINT_GROW = 2       # px around the objects' path
CINEMAGRAPH_GROW = 4   # px around the objects' frame-0 box
SEAM = 2               # px


def add_arguments(parser) -> None:
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--checkpoint", metavar="DIR", help="a cond-stage workdir (EMA)")
  source.add_argument("--model", metavar="NAME", help="a shipped conditional model "
                      f"(default: {applications.DEFAULT_CONDITIONAL_MODEL})")
  parser.add_argument("--step", type=int, metavar="N", help="with --checkpoint: this step")
  parser.add_argument("--apps", default=",".join(APPLICATIONS),
                      help=f"comma-separated, of {', '.join(APPLICATIONS)} (default: all)")
  parser.add_argument("--num", type=int, default=16, help="prompts per application")
  parser.add_argument("--seed", type=int, default=0, help="prompts and sampling seed")
  parser.add_argument("--batch", type=int, default=8, help="clips sampled at once")
  parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
  parser.add_argument("--guidance", type=float, help="(default: the model's)")
  parser.add_argument("--known-pixels", choices=diffusion_config.KNOWN_PIXEL_MODES,
                      help="(default: the model's diffusion.known_pixels)")
  parser.add_argument("--dilate", type=int, metavar="PX",
                      help="(default: the model's diffusion.known_dilation)")
  parser.add_argument("--json", type=pathlib.Path, help="write the report and settings")
  parser.add_argument("--sheet", type=pathlib.Path, help="contact sheet (.png): the first "
                      "4 clips of each application above their inputs")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_apps(text: str) -> tuple:
  apps = tuple(a.strip() for a in text.split(",") if a.strip())
  unknown = [a for a in apps if a not in APPLICATIONS]
  if unknown or not apps:
    raise UserError(f"--apps {text!r}: choose from {', '.join(APPLICATIONS)}")
  return apps


def check_args(args) -> None:
  parse_apps(args.apps)
  for flag, value in (("--num", args.num), ("--batch", args.batch), ("--steps", args.steps)):
    if value is not None and value < 1:
      raise UserError(f"{flag} must be >= 1, got {value}")
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")
  if args.dilate is not None and args.dilate < 0:
    raise UserError(f"--dilate must be >= 0 pixels, got {args.dilate}")
  if args.guidance is not None:
    diffusion_config.check_guidance(args.guidance)
  generate.check_seed(args.seed, shapes_eval.seeds_used(args.num, args.batch))
  check_report_paths(args.json, args.sheet)


def check_report_paths(json_path, sheet_path) -> None:
  """--json (.json) and --sheet (.png), where given, can be written: checked before any
  work (also `lumiere eval ssr`'s)."""
  for flag, path, suffix in (("--json", json_path, ".json"), ("--sheet", sheet_path, ".png")):
    if path is None:
      continue
    if path.suffix.lower() != suffix:
      raise UserError(f"{flag} {path}: write it as {suffix}")
    if not path.parent.is_dir():
      raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    if path.is_dir() or not os.access(path.parent, os.W_OK):
      raise UserError(f"{flag} {path} cannot be written")


# Requests and figures: pure numpy ----------------------------------------------------------

def object_pixels(video: np.ndarray) -> np.ndarray:
  """bool [T, H, W]: the pixels of a ground-truth clip that an object covers."""
  return video.max(axis=-1) > OBJECT_LEVEL


def box_fill(pixels: np.ndarray, grow: int) -> np.ndarray:
  """bool [H, W]: the bounding box of `pixels` (bool [H, W]) grown by `grow`, clipped."""
  rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
  fill = np.zeros_like(pixels)
  if len(rows):
    h, w = pixels.shape
    fill[max(0, rows[0] - grow):min(h, rows[-1] + grow + 1),
         max(0, cols[0] - grow):min(w, cols[-1] + grow + 1)] = True
  return fill


def request(app: str, clip: np.ndarray) -> applications.Condition:
  """The Condition `app` builds from a ground-truth clip uint8 [T, H, W, 3]."""
  frames = len(clip)
  if app == "animate":
    return applications.animate_condition(clip[0], frames)
  if app == "inpaint":
    path = applications.grow(object_pixels(clip).any(0), INPAINT_GROW)
    return applications.inpaint_condition(clip, np.broadcast_to(path, clip.shape[:3]))
  moving = box_fill(object_pixels(clip[:1])[0], CINEMAGRAPH_GROW)
  return applications.cinemagraph_condition(clip[0], frames, moving)


def figures(app: str, videos: np.ndarray, conditions: list, truth: np.ndarray) -> dict:
  """The application's own figures (module docstring), 0-255 units."""
  videos = videos.astype(np.float32)
  truth = truth.astype(np.float32)
  if app == "animate":
    images = np.stack([c.clip[0] for c in conditions]).astype(np.float32)
    error = np.abs(videos[:, 0] - images)
    colour = np.abs(videos[:, 0].mean(axis=(1, 2)) - images.mean(axis=(1, 2)))
    return {"frame0_mean_error": float(error.mean()), "frame0_max_error": float(error.max()),
            "mean_colour_error": float(colour.mean())}
  fill = np.stack([c.fill for c in conditions])                       # [N, T, H, W]
  if app == "inpaint":
    change = np.abs(videos - truth)                                   # [N, T, H, W, 3]
    known = ~fill
    seam = fill & applications.grow(~fill, SEAM)  # the band inside the region's edge
    return {"known_max_change": float(change[known].max()) if known.any() else 0.0,
            "known_mean_change": float(change[known].mean()) if known.any() else 0.0,
            "seam_error": float(change[seam].mean()) if seam.any() else float("nan")}
  still = ~fill[:, 1:]                                  # outside the region, after frame 0
  steps = np.abs(videos[:, 1:] - videos[:, :1]).mean(-1)                # [N, T-1, H, W]
  outside = [steps[i, t][still[i, t]].mean() for i in range(len(videos))
             for t in range(steps.shape[1]) if still[i, t].any()]
  inside = [steps[i, t][~still[i, t]].mean() for i in range(len(videos))
            for t in range(steps.shape[1]) if (~still[i, t]).any()]
  return {"outside_max_change": float(np.max(outside)),
          "outside_mean_change": float(np.mean(outside)),
          "inside_mean_change": float(np.mean(inside))}


def evaluate(sample: Callable, app: str, items: list, seed: int, batch: int,
             progress=None) -> tuple:
  """(report, videos) of one application: `sample(captions, condition, seed)` -> uint8
  clips, called in batches of one request per prompt (video i uses seed + i)."""
  conditions = [request(app, item.ground_truth) for item in items]
  captions = [item.caption for item in items]
  videos = []
  for start, size in shapes_eval.batches(len(items), batch):
    chunk = list(range(start, min(start + size, len(items))))
    padded = chunk + [chunk[-1]] * (size - len(chunk))
    condition = applications.Condition(np.stack([conditions[i].clip for i in padded]),
                                       np.stack([conditions[i].known for i in padded]))
    out = sample([captions[i] for i in padded], condition, seed + start)
    videos.extend(np.asarray(out)[:len(chunk)])
    if progress is not None:
      progress(len(chunk))
  videos = np.stack(videos)
  truth = np.stack([item.ground_truth for item in items])
  scores = shapes_eval.score(list(videos), captions)
  return {"accuracy": scores["accuracy"], "per_motion": scores["per_motion"],
          "consistency": scores["consistency"],
          **figures(app, videos, conditions, truth)}, videos, conditions


def run(args) -> int:
  check_args(args)
  apps = parse_apps(args.apps)
  name = args.model or (None if args.checkpoint else applications.DEFAULT_CONDITIONAL_MODEL)
  config, params = weights.load_model(checkpoint=args.checkpoint, name=name, step=args.step)
  applications.check_conditional_config(config, "eval apps")
  frames, resolution = applications.clip_shape(config)[:2]
  section = config.diffusion
  settings = diffusion_config.sampler_settings(section, steps=args.steps)
  guidance = section.guidance if args.guidance is None else args.guidance
  model = applications.ConditionalGenerator(config, params, settings, args.known_pixels,
                                            args.dilate)
  items = shapes_eval.held_out_items(args.num, args.seed, resolution, frames)
  sample = lambda captions, condition, seed: model(captions, condition, seed, guidance)
  bar = tqdm.tqdm(total=args.num * len(apps), desc="evaluating", unit="clip",
                  disable=args.quiet)
  report, rows = {}, []
  for app in apps:
    report[app], videos, conditions = evaluate(sample, app, items, args.seed, args.batch,
                                               bar.update)
    rows += [row for i in range(min(4, len(items))) for row in (
        (f"{app}: {items[i].caption}", videos[i]), ("input (known pixels)",
                                                    conditions[i].clip * conditions[i].known))]
  bar.close()
  for app in apps:
    print(f"{app}: " + ", ".join(f"{k} {v:.3g}" for k, v in report[app].items()
                                 if isinstance(v, float)) +
          ", accuracy " + ", ".join(f"{k} {v:.2f}" for k, v in report[app]["accuracy"].items()))
  settings_record = {"num": args.num, "seed": args.seed, "apps": list(apps),
                     "sampler": settings.method, "steps": settings.steps, "guidance": guidance,
                     "known_pixels": model.known_pixels, "dilation": model.dilation,
                     "checkpoint": args.checkpoint, "step": args.step, "model": name,
                     "resolution": resolution, "frames": frames, "batch": args.batch,
                     "object_level": OBJECT_LEVEL, "inpaint_grow": INPAINT_GROW,
                     "cinemagraph_grow": CINEMAGRAPH_GROW, "seam": SEAM}
  if args.json is not None:
    shapes_eval.write_json(args.json, report, settings_record)
    print(args.json)
  if args.sheet is not None:
    print(sheet_io.write_sheet(rows, args.sheet, 8))
  return 0
