"""`lumiere eval shapes`: the shapes evaluator from the command line (see shapes_eval)."""

import dataclasses
import io
import os
import pathlib

import numpy as np
import tqdm

from lumiere_jax import weights
from lumiere_jax.data import shapes
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import samplers
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import frechet, shapes_eval, shapes_features, tracker
from lumiere_jax.io import atomic
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.io import video as video_io
from lumiere_jax.models import build
from lumiere_jax.pipelines import applications, generate, keyframes

HELP = "Held-out shapes prompts: colour, shape, motion and consistency vs ground truth."
XT_SCALE = 4


def add_arguments(parser) -> None:
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--checkpoint", metavar="DIR", help="a training workdir (EMA weights); "
                      "with --pipeline keyframes-tsr, the keyframe model")
  source.add_argument("--model", metavar="NAME",
                      help=f"a shipped model (default: {weights.DEFAULT_MODEL})")
  parser.add_argument("--pipeline", choices=keyframes.PIPELINES, default="stunet",
                      help="stunet: the model makes the whole clip (default); "
                      "keyframes-tsr: the model (shapes_tiny:keyframes) makes quarter-rate "
                      "keyframes and a TSR model fills the frames between")
  tsr = parser.add_mutually_exclusive_group()
  tsr.add_argument("--tsr-checkpoint", metavar="DIR", help="keyframes-tsr: the TSR model's "
                   "workdir (a <J, C, M> model)")
  tsr.add_argument("--tsr-model", metavar="NAME", help="keyframes-tsr: a shipped TSR model "
                   f"(default: {applications.DEFAULT_CONDITIONAL_MODEL})")
  style = parser.add_mutually_exclusive_group()
  style.add_argument("--style", metavar="NAME", help="stylized generation (as `lumiere "
                     "stylize`): the model's backbone interpolated towards this shipped "
                     "style model's by --alpha")
  style.add_argument("--style-checkpoint", metavar="DIR", help="the same with a style "
                     "training workdir (EMA weights)")
  parser.add_argument("--alpha", type=float, metavar="A",
                      help="with --style/--style-checkpoint: how far towards the style, "
                      "in [0, 1]")
  parser.add_argument("--fvd", action="store_true",
                      help="also the Fréchet video distance (shapes features) between the "
                      f"videos and the ground truth of the same prompts (--num > "
                      f"{shapes_features.FEATURE_DIM})")
  parser.add_argument("--step", type=int, metavar="N", help="with --checkpoint: this step")
  parser.add_argument("--num", type=int, default=64, help="prompts (default 64)")
  parser.add_argument("--seed", type=int, default=0, help="prompts and sampling seed")
  parser.add_argument("--combinations", choices=shapes_eval.COMBINATIONS, default="held-out",
                      help="held-out: each prompt's first object is a combination never "
                      "trained on (default); seen: the same prompts with that object's "
                      "colour moved to the next palette colour, a trained combination")
  parser.add_argument("--batch", type=int, default=8, help="videos sampled at once")
  parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
  parser.add_argument("--time-power", type=float, metavar="P", help="the sampling time "
                      "grid's power, 1 uniform (default: the model's)")
  parser.add_argument("--guidance", type=float, help="(default: the model's)")
  guide = parser.add_mutually_exclusive_group()
  guide.add_argument("--negative-prompt", help="(default: the model's)")
  guide.add_argument("--contrast", action="store_true",
                     help="each prompt's negative prompt is the same prompt with the "
                     "opposite motion (left/right, up/down, growing/shrinking, "
                     "bouncing around/standing still)")
  parser.add_argument("--from-truth", type=float, metavar="S",
                      help="each clip an SDEdit of its prompt's ground truth from noise "
                      "level S in (0, 1] (--pipeline stunet): what the model's steps at "
                      "t <= S alone do to a right clip")
  generate.add_expert_arguments(parser)
  parser.add_argument("--json", type=pathlib.Path, help="write the report and settings")
  parser.add_argument("--sheet", type=pathlib.Path, help="contact sheet (.png) of the "
                      "model's videos above the ground truth's, the first 16 prompts")
  parser.add_argument("--xt-slice", type=pathlib.Path, help="X-T slices (.png), same")
  parser.add_argument("--videos", type=pathlib.Path, metavar="NPZ",
                      help="the clips themselves (.npz, no pickle): 'model' and "
                      "'ground_truth' uint8 [N, T, H, W, 3] and 'captions', for analysis "
                      "without sampling again")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_args(args) -> None:
  """Everything that can be wrong with the request, before any work."""
  if args.num < 1:
    raise UserError(f"--num must be >= 1, got {args.num}")
  if args.batch < 1:
    raise UserError(f"--batch must be >= 1, got {args.batch}")
  if args.steps is not None and args.steps < 1:
    raise UserError(f"--steps must be >= 1, got {args.steps}")
  if args.time_power is not None:
    samplers.check_time_power(args.time_power)
  if args.expert_switch is not None:
    diffusion_config.check_expert_switch(args.expert_switch)
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")
  if args.pipeline != keyframes.NAME and (args.tsr_checkpoint or args.tsr_model):
    raise UserError(f"--tsr-checkpoint and --tsr-model apply to --pipeline {keyframes.NAME}")
  if args.pipeline == keyframes.NAME and args.contrast:
    raise UserError("--contrast applies to --pipeline stunet")
  if args.from_truth is not None:
    if args.pipeline != "stunet":
      raise UserError("--from-truth applies to --pipeline stunet")
    if not 0.0 < args.from_truth <= 1.0:
      raise UserError(f"--from-truth must be in (0, 1], got {args.from_truth}")
  styled = args.style is not None or args.style_checkpoint is not None
  if styled != (args.alpha is not None):
    raise UserError("--alpha goes with --style or --style-checkpoint, and they with it")
  if styled:
    applications.check_alpha(args.alpha)
    if args.pipeline != "stunet":
      raise UserError("--style applies to --pipeline stunet")
  if args.fvd and args.num <= shapes_features.FEATURE_DIM:
    raise UserError(f"--fvd needs --num above {shapes_features.FEATURE_DIM} (the shapes "
                    f"features' dimension: fewer clips give a singular covariance), got "
                    f"{args.num}")
  if args.guidance is not None:
    diffusion_config.check_guidance(args.guidance)
  generate.check_seed(args.seed, shapes_eval.seeds_used(args.num, args.batch))
  for flag, path, suffixes in (("--json", args.json, (".json",)),
                               ("--sheet", args.sheet, (".png", ".jpg")),
                               ("--xt-slice", args.xt_slice, (".png",)),
                               ("--videos", args.videos, (".npz",))):
    if path is None:
      continue
    if path.suffix.lower() not in suffixes:
      raise UserError(f"{flag} {path}: write it as {' or '.join(suffixes)}")
    if not path.parent.is_dir():
      raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    if path.is_dir():
      raise UserError(f"{flag} {path} is a directory")
    if not os.access(path.parent, os.W_OK):
      raise UserError(f"{flag} {path}: folder {path.parent} is not writable")


def check_model(config) -> None:
  """A text-to-video model whose clips the shapes renderer can draw as ground truth."""
  generate.check_generation_config(config)
  check_clips(config)


def check_clips(config) -> None:
  """Clips the shapes renderer can draw as ground truth, with motion to judge."""
  frames = build.Model(config).clip_shape[0]
  if frames < 2:
    raise UserError(f"eval shapes judges motion: it needs a text-to-video model, got a "
                    f"{frames}-frame {config.model.kind} model")
  try:
    shapes.check_size(config.data.resolution, frames)
  except ValueError as e:
    raise UserError(f"the model's clips cannot be compared with rendered ground truth: "
                    f"{e}") from None


def load_sampler(args, steps):
  """(sample(captions, seed) -> uint8 videos, settings record, clip frames, resolution)
  of the pipeline the arguments name, checked before anything is sampled."""
  config, params = weights.load_model(checkpoint=args.checkpoint, name=args.model,
                                      step=args.step)
  if args.style is not None or args.style_checkpoint is not None:
    style_config, style_params = weights.load_model(checkpoint=args.style_checkpoint,
                                                    name=args.style)
    applications.check_style_config(config, style_config)
    params = applications.interpolate_backbone(params, style_params["backbone"], args.alpha)
  section = config.diffusion
  settings = diffusion_config.sampler_settings(section, steps=steps,
                                               time_power=args.time_power)
  guidance = section.guidance if args.guidance is None else args.guidance
  negative = section.negative_prompt if args.negative_prompt is None else args.negative_prompt
  switch = args.expert_switch
  if switch is None and (args.style is not None or args.style_checkpoint is not None):
    switch = 0.0  # stylized: the style is in the model's backbone, not the expert's
  model = generate.TextToVideo(config, params, settings, expert=generate.expert_from_args(args),
                               expert_switch=switch)
  record = {"pipeline": args.pipeline, "sampler": settings.method, "steps": settings.steps,
            "time_power": settings.time_power, "noise_correlation": settings.noise_correlation,
            "expert": args.expert_checkpoint or args.expert or (
                section.get("low_noise_expert") if model.expert is not None else None),
            "expert_switch": model.expert_switch,
            "guidance": guidance, "negative_prompt": negative, "contrast": args.contrast,
            "threshold": settings.threshold, "style": args.style,
            "style_checkpoint": args.style_checkpoint, "alpha": args.alpha}
  if args.pipeline == keyframes.NAME:
    tsr_config, tsr_params = weights.load_model(
        checkpoint=args.tsr_checkpoint,
        name=args.tsr_model or (None if args.tsr_checkpoint else
                                applications.DEFAULT_CONDITIONAL_MODEL))
    keyframes.check_models(config, tsr_config)
    check_clips(tsr_config)
    tsr_settings = diffusion_config.sampler_settings(tsr_config.diffusion, steps=steps,
                                                     time_power=args.time_power)
    model = keyframes.KeyframesTSR(model, applications.ConditionalGenerator(
        tsr_config, tsr_params, tsr_settings))
    record.update(tsr_checkpoint=args.tsr_checkpoint, tsr_model=args.tsr_model or (
        None if args.tsr_checkpoint else applications.DEFAULT_CONDITIONAL_MODEL),
                  keyframes=model.positions.tolist())
    config = tsr_config
  else:
    check_model(config)
  if args.contrast:
    record["negative_prompt"] = None  # one per prompt
    sample = lambda captions, seed, **init: model(
        captions, seed, guidance,
        negative_prompt=[shapes_eval.contrast_prompt(c) for c in captions], **init)
  else:
    sample = lambda captions, seed, **init: model(captions, seed, guidance,
                                                  negative_prompt=negative, **init)
  return sample, record, config.data.num_frames, config.data.resolution


def run(args) -> int:
  check_args(args)
  extractor = shapes_features.extractor() if args.fvd else None
  sample, record, frames, resolution = load_sampler(args, args.steps)
  items = shapes_eval.held_out_items(args.num, args.seed, resolution, frames,
                                     args.combinations)
  if args.from_truth is not None:
    sample = shapes_eval.from_truth(sample, items, args.seed, args.from_truth)
  bar = tqdm.tqdm(total=args.num, desc="evaluating", unit="video", disable=args.quiet)
  report, videos = shapes_eval.evaluate(sample, items, args.seed, args.batch,
                                        lambda done: bar.update(done - bar.n))
  bar.close()
  truth = np.stack([item.ground_truth for item in items])
  if extractor is not None:
    score = frechet.fvd(truth, videos, extractor, reference=f"shapes held-out ground truth "
                        f"of the same prompts (seed {args.seed})", label=args.pipeline)
    report["fvd"] = dataclasses.asdict(score)
  print(shapes_eval.table(report))
  settings_record = {
      "num": args.num, "seed": args.seed, "combinations": args.combinations, **record,
      "from_truth": args.from_truth,
      "resolution": resolution,
      "frames": frames, "checkpoint": args.checkpoint,
      "step": args.step, "model": None if args.checkpoint else (args.model or
                                                                weights.DEFAULT_MODEL),
      "batch": args.batch, "held_out": [" ".join(t) for t in shapes_eval.HELD_OUT],
      "judge": tracker.SETTINGS}
  if args.json is not None:
    shapes_eval.write_json(args.json, report, settings_record)
    print(args.json)
  shown = slice(0, 16)
  if args.sheet is not None:
    rows = [row for caption, v, g in zip(report["captions"][shown], videos[shown],
                                         truth[shown])
            for row in ((caption, v), ("ground truth", g))]
    print(sheet_io.write_sheet(rows, args.sheet, 8))
  if args.xt_slice is not None:
    pairs = np.stack([x for v, g in zip(videos[shown], truth[shown]) for x in (v, g)])
    print(video_io.write_png(args.xt_slice, video_io.xt_slices(pairs), scale=XT_SCALE))
  if args.videos is not None:
    write_videos(args.videos, videos, truth, report["captions"])
    print(args.videos)
  return 0


def write_videos(path: pathlib.Path, videos, truth, captions) -> None:
  """The sampled and the ground-truth clips with their captions, one .npz written
  atomically; `np.load(path)` reads it back without allow_pickle (the captions are a
  fixed-width unicode array, not objects)."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, model=np.asarray(videos, np.uint8),
                      ground_truth=np.asarray(truth, np.uint8),
                      captions=np.asarray(captions, dtype=str))
  atomic.write_bytes(path, buffer.getvalue())
