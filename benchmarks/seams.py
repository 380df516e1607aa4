"""Seams of temporal MultiDiffusion: the frame-to-frame change where windows meet, against
the change inside windows, for overlapping windows fused every step (overlap 2, the
paper's) and for independent non-overlapping windows (overlap 0), same seeds.

  python benchmarks/seams.py --frames 48 --out docs/seams_xt.png          # base model
  python benchmarks/seams.py --ssr-model shapes_ssr_x2 --data data/shapes64 \
      --out docs/ssr_seams_xt.png                                          # SSR model

Base model (default: the shipped shapes_t2v, or --checkpoint / --config): one clip of
--frames frames per prompt, sampled in windows of the model's clip length. SSR
(--ssr-model or --ssr-checkpoint): held-out clips of --data area-downsampled to the model's low
resolution, then upsampled in windows; the same figures of the original clips at the
same frames say what the ratio is without any seam. Steps, window weights, rotation and
noise are the model's defaults unless given. For each setting it prints the mean absolute
frame difference (uint8 units, RGB) over the transitions that cross a window edge
(diffusion/windows.py:seam_transitions) and over the others, and their ratio (seams /
inside: about 1 without a seam, above 1 with a jump), with a 95% bootstrap interval
over the clips (for the SSR, also of its ratio minus the originals'). For the base model it also tracks
each prompt's object as `lumiere eval shapes` does (evaluation/tracker.py) and prints its
centroid step (px) and relative area change at window edges and inside, and the eval's
motion accuracy over the long clips. --out writes the X-T slices (the middle row over
time), one band per overlap (--overlaps, default 2 above 0), one column per clip.
"""

import argparse

import numpy as np

from lumiere_jax import weights
from lumiere_jax.config import load_config
from lumiere_jax.data import shapes
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.evaluation import tracker
from lumiere_jax.io import video as video_io
from lumiere_jax.pipelines import generate, upsample, windowed

PROMPTS = ("a red circle moving right", "a blue square moving left",
           "a green triangle bouncing around", "a yellow circle moving up")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", help="a shipped base model (default: shapes_t2v)")
  parser.add_argument("--checkpoint", help="a base model's training workdir")
  parser.add_argument("--config", help="a fresh (untrained) base model of this config")
  parser.add_argument("--ssr-checkpoint", help="measure this SSR model instead")
  parser.add_argument("--ssr-model", help="measure this shipped SSR model instead "
                      "(e.g. shapes_ssr_x2)")
  parser.add_argument("--data", help="with an SSR model: a dataset at its resolution")
  parser.add_argument("--prompts", help="base model: prompts separated by ';' (default: "
                      "four moving objects), cycled over the clips")
  parser.add_argument("--clips", type=int, default=4)
  parser.add_argument("--frames", type=int, default=48, help="base model: frames per clip")
  parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--overlaps", default="2,0", help="overlaps to compare, comma-"
                      "separated (default 2,0: the paper's, and independent windows)")
  parser.add_argument("--weighting", choices=("uniform", "ramp"),
                      help="window weights (default: the model's)")
  parser.add_argument("--window-noise", choices=("independent", "repeat"),
                      help="base model: the long clip's starting noise "
                      "(diffusion/windows.py:repeated_noise_frames; default: the model's)")
  parser.add_argument("--rotate", action=argparse.BooleanOptionalAction,
                      help="rotating windows: each denoising step shifts the windows "
                      "(diffusion.window_rotate; default: the model's)")
  parser.add_argument("--out", help="X-T slices .png")
  return parser.parse_args()


def paper_edges(plan) -> np.ndarray:
  """[T - 1] bool: the transitions that cross an edge of the paper's fixed plan. Rotating
  windows (--rotate) move their edges every step; they are measured at the same
  transitions as the fixed plan, so the two compare like for like."""
  return windows_lib.seam_transitions(plan.step_plans()[0])


def frame_steps(videos) -> np.ndarray:
  """[N, T - 1]: each clip's mean |frame difference| (uint8 units, RGB) per transition."""
  return np.abs(np.diff(videos.astype(np.float32), axis=1)).mean(axis=(2, 3, 4))


def seam_ratio(videos, plan) -> tuple:
  """(mean |frame difference| at window edges, inside windows, ratio) over uint8 clips
  [N, T, H, W, 3]."""
  steps = frame_steps(videos).mean(axis=0)
  seams = paper_edges(plan)
  at, inside = steps[seams].mean(), steps[~seams].mean()
  return float(at), float(inside), float(at / inside)


def bootstrap_ratio(steps, plan, reference=None, draws: int = 2000, seed: int = 0):
  """95% interval of the seam ratio over clips resampled with replacement ([N, T - 1]
  frame_steps); with `reference` (the originals' steps, same clips), of the ratio minus
  the originals' ratio on the same draw: above 0 means a seam beyond what the content
  itself does at those frames."""
  seams = paper_edges(plan)
  rng = np.random.default_rng(seed)
  draws_ = rng.integers(0, len(steps), size=(draws, len(steps)))

  def ratios(s):
    mean = s[draws_].mean(axis=1)  # [draws, T - 1]
    return mean[:, seams].mean(axis=1) / mean[:, ~seams].mean(axis=1)

  values = ratios(steps) - (ratios(reference) if reference is not None else 0.0)
  return tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))


def tracked_seams(videos, prompts, plan) -> dict:
  """The prompted objects' centroid step (px) and |area change| / area per frame step,
  at window edges and inside windows (means over clips and objects), and the tracker's
  motion accuracy over the whole clips."""
  seams = paper_edges(plan)
  names = list(shapes.COLOURS)
  steps, changes, correct = [], [], []
  for video, prompt in zip(videos, prompts):
    correct += [r["motion"] for r in tracker.judge_video(video, prompt)]
    coverage = tracker.colour_coverage(video)
    for colour, _, _ in filter(None, tracker.parse_caption(prompt)):
      obj = tracker.track(coverage[names.index(colour)])
      steps.append(np.linalg.norm(np.diff(obj.centroids, axis=0), axis=-1))  # NaN: absent
      changes.append(np.abs(np.diff(obj.areas)) / np.maximum(obj.areas[:-1], tracker.MIN_AREA))
  steps, changes = np.stack(steps), np.stack(changes)
  return {"centroid_step": (np.nanmean(steps[:, seams]), np.nanmean(steps[:, ~seams])),
          "area_change": (changes[:, seams].mean(), changes[:, ~seams].mean()),
          "motion_accuracy": float(np.mean(correct))}


def base_clips(args, overlap):
  if args.config:
    config = load_config(args.config)
    params = generate.fresh_params(config)
  else:
    config, params = weights.load_model(checkpoint=args.checkpoint, name=args.model)
  settings = diffusion_config.sampler_settings(config.diffusion, steps=args.steps)
  windows = windowed.window_settings(config, overlap=overlap, weighting=args.weighting,
                                     noise=args.window_noise, rotate=args.rotate)
  model = generate.TextToVideo(config, params, settings, num_frames=args.frames,
                               windows=windows)
  chosen = [p.strip() for p in args.prompts.split(";")] if args.prompts else PROMPTS
  prompts = [chosen[i % len(chosen)] for i in range(args.clips)]
  videos = model(prompts, args.seed, config.diffusion.guidance,
                 negative_prompt=config.diffusion.negative_prompt)
  return videos, model.plan, prompts


def ssr_clips(args, overlap):
  from lumiere_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config, params = weights.load_model(checkpoint=args.ssr_checkpoint, name=args.ssr_model)
  clips = pipeline.open_split(args.data, config.data.eval_split)
  low = np.stack([pipeline.area_downsample(clips[i]["video"], config.data.low_resolution)
                  for i in range(args.clips)])
  settings = diffusion_config.sampler_settings(config.diffusion, steps=args.steps)
  windows = windowed.window_settings(config, overlap=overlap, weighting=args.weighting,
                                     rotate=args.rotate)
  upsampler = upsample.Upsampler(config, params, settings, windows)
  truth = np.stack([clips[i]["video"] for i in range(args.clips)])
  return upsampler(low, seed=args.seed), upsampler.sampling.plan(low.shape[1]), truth


def main():
  args = parse_args()
  ssr = bool(args.ssr_checkpoint or args.ssr_model)
  make = ssr_clips if ssr else base_clips
  rows = []
  for overlap in map(int, args.overlaps.split(",")):
    videos, plan, reference = make(args, overlap)  # reference: the prompts, or the originals
    at, inside, ratio = seam_ratio(videos, plan)
    low, high = bootstrap_ratio(frame_steps(videos), plan)
    rotating = (f", rotating over {len(plan.step_plans())} plans"
                if len(plan.step_plans()) > 1 else "")
    print(f"overlap {overlap}: windows at {plan.starts}{rotating} (W={plan.window}, T="
          f"{plan.num_frames}), |frame difference| at window edges {at:.2f}, inside "
          f"{inside:.2f}, ratio {ratio:.3f} (95% over clips {low:.3f}-{high:.3f})")
    if ssr:
      at, inside, original = seam_ratio(reference, plan)
      low, high = bootstrap_ratio(frame_steps(videos), plan, frame_steps(reference))
      print(f"  the original clips at the same frames: edges {at:.2f}, inside {inside:.2f}, "
            f"ratio {original:.3f}; the SSR's ratio minus theirs {ratio - original:+.3f} "
            f"(95% over clips {low:+.3f} to {high:+.3f})")
    else:
      tracked = tracked_seams(videos, reference, plan)
      for key in ("centroid_step", "area_change"):
        edge, within = tracked[key]
        print(f"  {key}: at window edges {edge:.3f}, inside {within:.3f}, ratio "
              f"{edge / within:.3f}")
      print(f"  motion accuracy over the {plan.num_frames}-frame clips: "
            f"{tracked['motion_accuracy']:.2f}")
    rows.append(video_io.xt_slices(videos))
  if args.out:
    gap = np.full((2, rows[0].shape[1], 3), 128, np.uint8)
    stacked = [part for row in rows for part in (row, gap)][:-1]
    print(video_io.write_png(args.out, np.concatenate(stacked), scale=4))


if __name__ == "__main__":
  main()
