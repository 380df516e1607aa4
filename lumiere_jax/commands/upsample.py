"""`lumiere upsample`: spatial super-resolution of a video with temporal MultiDiffusion."""

from lumiere_jax import config as config_lib
from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.config import finalize, load_config
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.samplers import SAMPLERS
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.io import video as video_io
from lumiere_jax.models import conditioning
from lumiere_jax.pipelines import generate as generate_pipeline
from lumiere_jax.pipelines import upsample as pipeline
from lumiere_jax.pipelines import windowed

HELP = "Spatial super-resolution of a video with temporal MultiDiffusion."
DEFAULT_SSR_MODEL = pipeline.DEFAULT_SSR_MODEL


def add_source_arguments(parser, prefix: str = "") -> None:
  """--model / --checkpoint / --config (and --step) of the SSR model; `prefix` names
  them for a command with another model too (generate --upsample: --ssr-model ...)."""
  source = parser.add_mutually_exclusive_group()
  source.add_argument(f"--{prefix}model", metavar="NAME",
                      help=f"a shipped SSR model (default: {DEFAULT_SSR_MODEL})")
  source.add_argument(f"--{prefix}checkpoint", metavar="DIR",
                      help="an SSR training workdir (lumiere train --config shapes_tiny:ssr); "
                           "the EMA weights are used")
  source.add_argument(f"--{prefix}config", metavar="SPEC",
                      help="NAME[:VARIANT] or path.py[:VARIANT]: a freshly initialised SSR "
                           "model of this config (untrained: for development)")


def add_arguments(parser):
  parser.add_argument("--video", required=True, metavar="IN",
                      help="the low-resolution clip: .mp4, .gif or .npy (uint8 [T, H, W, 3]) "
                           "at the model's low resolution (it is not resized)")
  parser.add_argument("--out", required=True, metavar="OUT",
                      help="the upsampled clip: .mp4, .gif or .npy")
  add_source_arguments(parser)
  parser.add_argument("--step", type=int, metavar="N",
                      help="with --checkpoint: this step instead of the newest")
  parser.add_argument("--window", type=int, metavar="W",
                      help="frames per window (default: the model's diffusion.window, else "
                           "its training clip length)")
  parser.add_argument("--overlap", type=int, metavar="O",
                      help="frames shared by neighbouring windows (default: "
                           "diffusion.window_overlap, 2)")
  parser.add_argument("--weighting", choices=windows_lib.WEIGHTINGS,
                      help="how overlapping windows are averaged: 'uniform' (least squares, "
                           "the paper's) or 'ramp' (window edges count less)")
  parser.add_argument("--rotate-windows", action="store_true", default=None,
                      help="each denoising step shifts the windows, so no frame is a "
                           "window edge at every step (not in the paper; default: the "
                           "model's diffusion.window_rotate)")
  parser.add_argument("--steps", type=int, metavar="N",
                      help="sampling steps (default: the model's diffusion.steps)")
  parser.add_argument("--sampler", choices=SAMPLERS,
                      help="default: the model's diffusion.sampler")
  parser.add_argument("--prompt", default="", metavar="TEXT",
                      help="the clip's caption (optional: the low-resolution clip conditions)")
  parser.add_argument("--guidance", type=float, metavar="W",
                      help="classifier-free guidance on the prompt (default: the model's, 1 = "
                           "none)")
  parser.add_argument("--noise-level", type=float, metavar="S",
                      help="noise conditioning augmentation: the low-resolution clip is noised "
                           "to this time of the schedule, in [0, 1] (default: the model's "
                           "diffusion.noise_aug_level, 0.15)")
  parser.add_argument("--seed", type=int, default=0, metavar="S")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  config_lib.accept_overrides(parser)


def check_arguments(args) -> None:
  """What can be checked before a model is loaded or the video read."""
  video_io.check_video_path(args.out)
  atomic.check_output_file(args.out, "--out")
  if args.window is not None and args.overlap is not None:
    windows_lib.check_windows(args.window, args.overlap)  # else with the model's defaults
  if args.noise_level is not None:
    conditioning.check_noise_level(args.noise_level)
  if args.guidance is not None:
    diffusion_config.check_guidance(args.guidance)
  generate_pipeline.check_seed(args.seed, 1)
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")


def load_ssr(model=None, checkpoint=None, config=None, step=None, overrides=()):
  """(config, params()) of the SSR model named: a shipped one (default shapes_ssr_x2), a
  training workdir, or a fresh init of a config. Refuses a model that is not SSR. The
  parameters come from a call, so that a fresh model's initialisation (slow) waits until
  the request has been checked against the config."""
  if config is not None:
    loaded = load_config(config, overrides)
    pipeline.check_ssr_config(loaded)
    return loaded, lambda: generate_pipeline.fresh_params(loaded)
  if checkpoint is None and model is None:
    if DEFAULT_SSR_MODEL not in weights.manifest():
      raise UserError(f"no SSR model is shipped with this install yet ({DEFAULT_SSR_MODEL}); "
                      "train one (lumiere train --config shapes_tiny:ssr) and pass "
                      "--checkpoint DIR")
    model = DEFAULT_SSR_MODEL
  loaded, params = weights.load_model(checkpoint=checkpoint, name=model, step=step)
  if overrides:
    loaded = finalize(loaded.unlock(), overrides)
  pipeline.check_ssr_config(loaded)
  return loaded, lambda: params


def run(args) -> int:
  check_arguments(args)
  overrides = config_lib.parse_overrides(args.config_overrides)
  video = video_io.read_video(args.video)
  config, params = load_ssr(args.model, args.checkpoint, args.config, args.step, overrides)
  windows = windowed.window_settings(config, args.window, args.overlap, args.weighting,
                                     rotate=args.rotate_windows)
  pipeline.check_low_res_videos(config, video, windows)
  settings = diffusion_config.sampler_settings(config.diffusion, method=args.sampler,
                                               steps=args.steps)
  guidance = config.diffusion.guidance if args.guidance is None else args.guidance
  out = pipeline.upsample(config, params(), video, settings=settings, windows=windows,
                          noise_level=args.noise_level, prompts=[args.prompt],
                          seed=args.seed, guidance_scale=guidance,
                          progress=not args.quiet)
  with runtime.shielded():  # once writing starts, Ctrl-C lets it finish
    print(video_io.write_video(args.out, out[0]))
  runtime.check_interrupt("interrupted; the output was complete and is written")
  return 0
