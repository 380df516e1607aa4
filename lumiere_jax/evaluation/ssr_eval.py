"""`lumiere eval ssr`: the SSR model against bicubic and bilinear upsampling on held-out
clips of a shapes dataset at the model's resolution.

Each clip of the dataset's held-out split (config.data.eval_split) is area-downsampled
to the model's low resolution, as training made its inputs, then upsampled back three
ways: the SSR model (in temporal windows, its sampling defaults), bicubic and bilinear
(PIL, per frame). Against the original clip, all RGB, 0-255:

  psnr            10 log10(255^2 / MSE) per clip, averaged over clips
  edge_sharpness  mean gradient magnitude (central differences, per channel) at the
                  original's edge pixels (its gradient magnitude above EDGE_THRESHOLD),
                  over the original's there: 1 is as sharp as the truth, below 1 blurred
  edge_error      mean |gradient - the original's gradient| at those pixels
"""

import os
import pathlib

import numpy as np
import tqdm
from PIL import Image

from lumiere_jax import runtime
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import apps_eval, shapes_eval
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.pipelines import generate, windowed

HELP = "The SSR model against bicubic and bilinear upsampling (PSNR, edge sharpness)."
EDGE_THRESHOLD = 32.0  # 0-255 units per pixel: an edge of the shapes data, not noise
BASELINES = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR (dB) of two uint8 arrays of one shape; inf where they are equal."""
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def gradients(video: np.ndarray) -> np.ndarray:
  """float32 [..., H, W, C] -> gradient magnitude [..., H - 2, W - 2, C] (central
  differences)."""
  v = video.astype(np.float32)
  gx = (v[..., 1:-1, 2:, :] - v[..., 1:-1, :-2, :]) / 2
  gy = (v[..., 2:, 1:-1, :] - v[..., :-2, 1:-1, :]) / 2
  return np.sqrt(gx ** 2 + gy ** 2)


def edge_figures(video: np.ndarray, truth: np.ndarray) -> tuple:
  """(edge sharpness, edge error) of `video` against `truth` (module docstring)."""
  g, t = gradients(video), gradients(truth)
  edges = t > EDGE_THRESHOLD
  if not edges.any():
    return float("nan"), float("nan")
  return float(g[edges].mean() / t[edges].mean()), float(np.abs(g - t)[edges].mean())


def resize(video: np.ndarray, size: int, method) -> np.ndarray:
  """uint8 [T, h, w, 3] -> [T, size, size, 3] by PIL's `method`, frame by frame."""
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), method))
                   for f in video])


def scores(videos: dict, truth: np.ndarray) -> dict:
  """{method: {psnr, edge_sharpness, edge_error}} averaged over clips; videos: {method:
  uint8 [N, T, H, W, 3]}, truth: the same shape."""
  out = {}
  for method, clips in videos.items():
    rows = [(psnr(v, t), *edge_figures(v, t)) for v, t in zip(clips, truth)]
    out[method] = dict(zip(("psnr", "edge_sharpness", "edge_error"),
                           map(float, np.nanmean(np.array(rows), axis=0))))
  return out


def add_arguments(parser) -> None:
  from lumiere_jax.commands import upsample  # pylint: disable=g-import-not-at-top
  upsample.add_source_arguments(parser)
  parser.add_argument("--step", type=int, metavar="N", help="with --checkpoint: this step")
  parser.add_argument("--data", required=True, metavar="DIR",
                      help="a shapes dataset at the model's resolution (lumiere data build "
                           "shapes --resolution 128 ... --held-out ...); its held-out split")
  parser.add_argument("--num", type=int, default=16, help="clips (default 16)")
  parser.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp"),
                      help="(default: the model's)")
  parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
  parser.add_argument("--noise-level", type=float, metavar="S",
                      help="conditioning noise level (default: the model's)")
  parser.add_argument("--weighting", choices=windows_lib.WEIGHTINGS,
                      help="how overlapping windows are averaged (default: the model's)")
  parser.add_argument("--rotate-windows", action="store_true", default=None,
                      help="each denoising step shifts the windows (default: the model's "
                           "diffusion.window_rotate)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", type=pathlib.Path, help="write the report and settings")
  parser.add_argument("--sheet", type=pathlib.Path, help="contact sheet (.png): the first "
                      "4 clips, SSR above bicubic above the original")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_args(args) -> None:
  if args.num < 1:
    raise UserError(f"--num must be >= 1, got {args.num}")
  if args.steps is not None and args.steps < 1:
    raise UserError(f"--steps must be >= 1, got {args.steps}")
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")
  generate.check_seed(args.seed, args.num)
  apps_eval.check_report_paths(args.json, args.sheet)


def held_out_clips(config, data: str, num: int) -> np.ndarray:
  """uint8 [num, T, R, R, 3]: the first `num` clips of the data's held-out split."""
  from lumiere_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  source = pipeline.open_split(data, config.data.eval_split)
  if len(source) < num:
    raise UserError(f"{data}: the {config.data.eval_split} split has {len(source)} clips, "
                    f"--num asks for {num}")
  clips = np.stack([source[i]["video"] for i in range(num)])
  if clips.shape[2] != config.data.resolution:
    raise UserError(f"{data} holds {clips.shape[2]}x{clips.shape[3]} clips; the SSR model "
                    f"makes {config.data.resolution}x{config.data.resolution}")
  return clips


def run(args) -> int:
  from lumiere_jax.commands import upsample  # pylint: disable=g-import-not-at-top
  from lumiere_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from lumiere_jax.pipelines import upsample as upsample_pipeline  # pylint: disable=g-import-not-at-top
  check_args(args)
  config, params = upsample.load_ssr(args.model, args.checkpoint, args.config, args.step)
  truth = held_out_clips(config, args.data, args.num)
  low = pipeline.area_downsample(truth, config.data.low_resolution)
  settings = diffusion_config.sampler_settings(config.diffusion, method=args.sampler,
                                               steps=args.steps)
  windows = windowed.window_settings(config, weighting=args.weighting,
                                     rotate=args.rotate_windows)
  upsampler = upsample_pipeline.Upsampler(config, params(), settings, windows,
                                          progress=not args.quiet)
  ssr = []
  for i, clip in enumerate(tqdm.tqdm(low, desc="clips", unit="clip", disable=args.quiet)):
    ssr.append(upsampler(clip, seed=args.seed + i, noise_level=args.noise_level)[0])
    runtime.check_interrupt("interrupted; nothing was written")
  size = config.data.resolution
  videos = {"ssr": np.stack(ssr), **{name: np.stack([resize(c, size, method) for c in low])
                                     for name, method in BASELINES.items()}}
  report = scores(videos, truth)
  print(f"{'':10s} {'PSNR dB':>8s} {'edge sharpness':>15s} {'edge error':>11s}")
  for method, row in report.items():
    print(f"{method:10s} {row['psnr']:8.2f} {row['edge_sharpness']:15.3f} "
          f"{row['edge_error']:11.2f}")
  settings_record = {
      "num": args.num, "seed": args.seed, "data": str(args.data),
      "split": config.data.eval_split, "low_resolution": config.data.low_resolution,
      "resolution": size, "frames": int(truth.shape[1]), "sampler": settings.method,
      "steps": settings.steps, "noise_level": (config.diffusion.noise_aug_level
                                               if args.noise_level is None
                                               else args.noise_level),
      "window": windows.window, "overlap": windows.overlap,
      "weighting": windows.weighting, "rotate_windows": windows.rotate,
      "checkpoint": args.checkpoint,
      "step": args.step, "model": args.model, "edge_threshold": EDGE_THRESHOLD}
  with runtime.shielded():
    if args.json is not None:
      shapes_eval.write_json(args.json, {"report": report}, settings_record)
      print(args.json)
    if args.sheet is not None:
      rows = [row for i in range(min(4, args.num)) for row in (
          (f"SSR x{size // config.data.low_resolution}", videos["ssr"][i]),
          ("bicubic", videos["bicubic"][i]), ("original", truth[i]))]
      print(sheet_io.write_sheet(rows, args.sheet, 8))
  return 0
