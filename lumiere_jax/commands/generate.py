"""`lumiere generate`: text-to-video generation (and SDEdit of a given video)."""

import pathlib

from lumiere_jax.config import finalize, load_config
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion.guidance import THRESHOLDS
from lumiere_jax.diffusion.samplers import SAMPLERS
from lumiere_jax.errors import UserError
from lumiere_jax.io import video as video_io
from lumiere_jax.pipelines import generate as pipeline

HELP = "Text-to-video generation."
DEFAULT_CONFIG = "shapes_tiny:t2v"
DEFAULT_STRENGTH = 0.6


def add_arguments(parser):
  parser.add_argument("--config",
                      help="config file[:variant] (default: the checkpoint's own config, "
                           f"else {DEFAULT_CONFIG})")
  parser.add_argument("--checkpoint", metavar="DIR",
                      help="a training workdir (or its checkpoints/ or a step folder); the "
                           "EMA weights are used. Without it the model is freshly "
                           "initialised from config.seed")
  prompts = parser.add_mutually_exclusive_group(required=True)
  prompts.add_argument("--prompt", action="append", metavar="TEXT",
                       help="a prompt; repeat for several (all generated as one batch)")
  prompts.add_argument("--prompts", metavar="FILE", help="file with one prompt per line")
  outputs = parser.add_mutually_exclusive_group(required=True)
  outputs.add_argument("--out", metavar="PATH",
                       help="one video as .mp4, .gif or .npy (uint8 [T, H, W, 3])")
  outputs.add_argument("--out-dir", metavar="DIR",
                       help="one .npy per prompt and manifest.jsonl (prompt, seed, path)")
  parser.add_argument("--also", action="append", choices=("mp4", "gif"), default=[],
                      help="with --out-dir: also write each video in this format")
  parser.add_argument("--xt-slice", metavar="PNG",
                      help="write the X-T slice (middle row over time) of the videos")
  parser.add_argument("--sheet", metavar="PNG",
                      help="write a contact sheet: each prompt above frames of its video")
  parser.add_argument("--sampler", choices=SAMPLERS,
                      help="default: config.diffusion.sampler")
  parser.add_argument("--steps", type=int, metavar="N",
                      help="sampling steps >= 1 (default: config.diffusion.steps)")
  parser.add_argument("--eta", type=float, help="DDIM noise in [0, 1] (0: deterministic)")
  parser.add_argument("--threshold", choices=THRESHOLDS,
                      help="x0 thresholding (default: config.diffusion.threshold)")
  parser.add_argument("--guidance", type=float, metavar="W",
                      help="classifier-free guidance scale >= 0; 1 is the conditional model "
                           "alone (default: config.diffusion.guidance)")
  parser.add_argument("--seed", type=int, default=0, metavar="S",
                      help="video i uses seed S + i (default 0)")
  parser.add_argument("--num-frames", type=int, metavar="T", help="frames per video")
  parser.add_argument("--init-video", metavar="PATH",
                      help="SDEdit: start from this video (.npy/.gif/.mp4) noised to "
                           "--strength")
  parser.add_argument("--strength", type=float, metavar="S",
                      help=f"SDEdit noise level in (0, 1] (default {DEFAULT_STRENGTH})")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def read_prompts(args) -> list:
  if args.prompts is None:
    return pipeline.check_prompts(args.prompt)
  path = pathlib.Path(args.prompts)
  if not path.is_file():
    raise UserError(f"prompts file not found: {path}")
  prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not prompts:
    raise UserError(f"prompts file {path} has no prompts")
  return pipeline.check_prompts(prompts)


def _config(args, overrides):
  """--config if given; else the config the checkpoint was trained with; else the default."""
  if args.config is not None or args.checkpoint is None:
    return load_config(args.config or DEFAULT_CONFIG, overrides)
  from lumiere_jax.train import checkpoint as train_checkpoint  # orbax only when asked
  return finalize(train_checkpoint.load_run_config(args.checkpoint), overrides)


def run(args) -> int:
  prompts = read_prompts(args)
  pipeline.check_outputs(len(prompts), args.out, args.out_dir, args.also, args.xt_slice,
                         args.sheet)
  if args.strength is not None and args.init_video is None:
    raise UserError("--strength applies to --init-video (SDEdit)")
  overrides = [] if args.num_frames is None else [f"data.num_frames={args.num_frames}"]
  config = _config(args, overrides)
  section = config.diffusion
  settings = diffusion_config.sampler_settings(section, method=args.sampler, steps=args.steps,
                                               eta=args.eta, threshold=args.threshold)
  guidance = section.guidance if args.guidance is None else args.guidance
  init_video, strength = None, 1.0
  if args.init_video is not None:
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    init_video = video_io.read_video(args.init_video)
  videos = pipeline.generate(config, prompts, settings=settings, guidance_scale=guidance,
                             seed=args.seed, checkpoint=args.checkpoint,
                             init_video=init_video, strength=strength,
                             progress=not args.quiet)
  for path in pipeline.save_outputs(videos, prompts, args.seed, args.out, args.out_dir,
                                    args.also, args.xt_slice, args.sheet):
    print(path)
  return 0
