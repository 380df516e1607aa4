"""`lumiere generate`: text-to-video generation (and SDEdit of a given video)."""

import pathlib

from lumiere_jax import config as config_lib
from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.config import finalize, load_config
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion.guidance import THRESHOLDS
from lumiere_jax.diffusion import samplers
from lumiere_jax.diffusion.samplers import SAMPLERS
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.errors import UserError
from lumiere_jax.io import video as video_io
from lumiere_jax.commands import upsample as upsample_command
from lumiere_jax.pipelines import applications, keyframes
from lumiere_jax.pipelines import generate as pipeline
from lumiere_jax.pipelines import upsample as upsample_pipeline
from lumiere_jax.pipelines import windowed

HELP = "Text-to-video generation."
DEFAULT_STRENGTH = 0.6


def add_arguments(parser):
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", metavar="NAME",
                      help="a shipped model (default: "
                           f"{weights.DEFAULT_MODEL}; `lumiere generate --list-models`)")
  source.add_argument("--checkpoint", metavar="DIR",
                      help="a training workdir (or its checkpoints/ or a step folder); the "
                           "EMA weights are used")
  source.add_argument("--config",
                      help="NAME[:VARIANT] or path.py[:VARIANT]: a freshly initialised "
                           "model of this config (untrained: for development)")
  parser.add_argument("--step", type=int, metavar="N",
                      help="with --checkpoint: this step instead of the newest")
  parser.add_argument("--list-models", action="store_true",
                      help="list the shipped models and exit")
  prompts = parser.add_mutually_exclusive_group()
  prompts.add_argument("--prompt", action="append", metavar="TEXT",
                       help="a prompt; repeat for several (all generated as one batch)")
  prompts.add_argument("--prompts", metavar="FILE", help="file with one prompt per line")
  outputs = parser.add_mutually_exclusive_group()
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
  parser.add_argument("--time-power", type=float, metavar="P",
                      help="the sampling time grid t_i = 1 - (i / steps)^P: 1 uniform, above "
                      "1 crowded at high noise (default: config.diffusion.time_power)")
  parser.add_argument("--eta", type=float, help="DDIM noise in [0, 1] (0: deterministic)")
  parser.add_argument("--threshold", choices=THRESHOLDS,
                      help="x0 thresholding (default: config.diffusion.threshold)")
  parser.add_argument("--guidance", type=float, metavar="W",
                      help="classifier-free guidance scale >= 0; 1 is the conditional model "
                           "alone (default: config.diffusion.guidance)")
  parser.add_argument("--negative-prompt", metavar="TEXT",
                      help="guide away from this prompt instead of the empty one "
                           "(default: the model's diffusion.negative_prompt)")
  parser.add_argument("--seed", type=int, default=0, metavar="S",
                      help="video i uses seed S + i (default 0)")
  parser.add_argument("--num-frames", type=int, metavar="T",
                      help="frames per video; beyond the model's clip length the clip is "
                           "sampled in overlapping windows fused at every step (temporal "
                           "MultiDiffusion)")
  long_clips = parser.add_argument_group("long clips (--num-frames beyond the clip length)")
  long_clips.add_argument("--window", type=int, metavar="W",
                          help="frames per window (default: the model's clip length)")
  long_clips.add_argument("--overlap", type=int, metavar="O",
                          help="frames shared by neighbouring windows (default 2)")
  long_clips.add_argument("--weighting", choices=windows_lib.WEIGHTINGS,
                          help="how overlapping windows are weighted (default: the model's "
                               "diffusion.window_weighting)")
  long_clips.add_argument("--window-noise", choices=windows_lib.NOISE_MODES,
                          help="the starting noise: independent per frame (the paper's), or "
                               "the first window's repeated over the clip with local "
                               "shuffles, so that windows agree (FreeNoise; default: the "
                               "model's diffusion.window_noise)")
  long_clips.add_argument("--rotate-windows", action="store_true", default=None,
                          help="each denoising step shifts the windows, so no frame "
                               "is a window edge at every step (not in the paper; default: "
                               "the model's diffusion.window_rotate)")
  baseline = parser.add_argument_group(
      "keyframes + temporal super-resolution (the cascade Lumiere argues against)")
  baseline.add_argument("--pipeline", choices=keyframes.PIPELINES, default="stunet",
                        help="stunet: the model makes the whole clip (default); "
                        "keyframes-tsr: the model (shapes_tiny:keyframes) makes quarter-rate "
                        "keyframes and a TSR model fills the frames between")
  tsr = baseline.add_mutually_exclusive_group()
  tsr.add_argument("--tsr-checkpoint", metavar="DIR",
                   help="the TSR model's workdir (a <J, C, M> model)")
  tsr.add_argument("--tsr-model", metavar="NAME", help="a shipped TSR model (default: "
                   f"{applications.DEFAULT_CONDITIONAL_MODEL})")
  cascade = parser.add_argument_group("cascade (--upsample: the base model, then SSR)")
  cascade.add_argument("--upsample", action="store_true",
                       help="upsample the videos with an SSR model (default: the shipped "
                            f"{upsample_command.DEFAULT_SSR_MODEL})")
  upsample_command.add_source_arguments(cascade, "ssr-")
  parser.add_argument("--init-video", metavar="PATH",
                      help="SDEdit: start from this video (.npy/.gif/.mp4) noised to "
                           "--strength")
  parser.add_argument("--strength", type=float, metavar="S",
                      help=f"SDEdit noise level in (0, 1] (default {DEFAULT_STRENGTH})")
  pipeline.add_expert_arguments(parser)
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  config_lib.accept_overrides(parser)


def read_prompts(args) -> list:
  if args.prompts is None:
    if args.prompt is None:
      raise UserError("give --prompt TEXT (repeatable) or --prompts FILE")
    return pipeline.check_prompts(args.prompt)
  path = pathlib.Path(args.prompts)
  if not path.is_file():
    raise UserError(f"prompts file not found: {path}")
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"prompts file {path} is not UTF-8 text (byte {e.start}); give one "
                    f"prompt per line") from None
  if "\0" in text:
    raise UserError(f"prompts file {path} holds NUL bytes: a binary file, not text")
  prompts = [line.strip() for line in text.splitlines() if line.strip()]
  if not prompts:
    raise UserError(f"prompts file {path} has no prompts")
  return pipeline.check_prompts(prompts)


def load(args, overrides=()):
  """(config, params) of the model the arguments name: --model, --checkpoint (its own
  config), --config (fresh init), else the default shipped model. `overrides` are
  sampling-time config changes (e.g. data.num_frames)."""
  if args.config is not None:
    config = load_config(args.config, overrides)
    return config, pipeline.fresh_params(config)
  config, params = weights.load_model(checkpoint=args.checkpoint, name=args.model,
                                      step=args.step)
  if overrides:
    config = finalize(config.unlock(), overrides)
  return config, params


def list_models() -> int:
  models = weights.manifest()
  if not models:
    print("no shipped models in this install")
  for name, entry in sorted(models.items()):
    print(f"{name}: {entry.get('description', '')}")
  return 0


def check_sampling_args(args, count: int) -> None:
  """The sampling flags given, checked before any model is loaded."""
  pipeline.check_seed(args.seed, count)
  if args.steps is not None and not 1 <= args.steps <= samplers.MAX_STEPS:
    raise UserError(f"--steps must be an integer >= 1 and <= {samplers.MAX_STEPS}, got "
                    f"{args.steps}")
  if args.eta is not None and not 0.0 <= args.eta <= 1.0:
    raise UserError(f"--eta must be in [0, 1], got {args.eta}")
  if args.time_power is not None:
    samplers.check_time_power(args.time_power)
  if args.guidance is not None:
    diffusion_config.check_guidance(args.guidance)
  if args.strength is not None:
    samplers.check_strength(args.strength)
  if args.expert_switch is not None:
    diffusion_config.check_expert_switch(args.expert_switch)


def clip_length(config, args):
  """(config, num_frames, windows): --num-frames up to the model's clip length sets the
  clip length (data.num_frames); beyond it, a video model samples the clip in windows."""
  frames, clip = args.num_frames, config.data.num_frames
  if frames is None or config.model.kind != "stunet" or frames <= clip:
    if any(v is not None for v in (args.window, args.overlap, args.weighting,
                                   args.window_noise, args.rotate_windows)):
      raise UserError(f"--window, --overlap, --weighting, --window-noise and "
                      f"--rotate-windows apply to --num-frames beyond the model's clip "
                      f"length ({clip} frames)")
    if frames is not None:
      config = finalize(config.unlock(), [f"data.num_frames={frames}"])
    return config, None, None
  return config, frames, windowed.window_settings(config, args.window, args.overlap,
                                                  args.weighting, args.window_noise,
                                                  args.rotate_windows)


def load_cascade(args, config, frames: int):
  """The Upsampler of --upsample (None without it), checked against the base model's
  videos before anything is sampled."""
  named = [f"--ssr-{f}" for f in ("model", "checkpoint", "config")
           if getattr(args, f"ssr_{f}") is not None]
  if not args.upsample:
    if named:
      raise UserError(f"{named[0]} applies to --upsample")
    return None
  ssr_config, ssr_params = upsample_command.load_ssr(args.ssr_model, args.ssr_checkpoint,
                                                     args.ssr_config)
  low, base = ssr_config.data.low_resolution, config.data.resolution
  if base != low:
    raise UserError(f"the base model makes {base}x{base} frames but the SSR model "
                    f"upsamples {low}x{low} clips")
  windows = windowed.window_settings(ssr_config)
  windowed.check_clip_length(ssr_config, frames, windows)
  settings = diffusion_config.sampler_settings(ssr_config.diffusion)
  return upsample_pipeline.Upsampler(ssr_config, ssr_params(), settings, windows,
                                     progress=not args.quiet)


def check_pipeline_args(args) -> None:
  if args.pipeline != keyframes.NAME:
    if args.tsr_checkpoint or args.tsr_model:
      raise UserError(f"--tsr-checkpoint and --tsr-model apply to --pipeline {keyframes.NAME}")
    return
  for flag, value in (("--init-video", args.init_video), ("--num-frames", args.num_frames),
                      ("--upsample", args.upsample or None)):
    if value is not None:
      raise UserError(f"{flag} does not apply to --pipeline {keyframes.NAME}")


def keyframes_tsr(args, config, params, settings) -> keyframes.KeyframesTSR:
  """The cascade: `config` is the keyframe model; the TSR model as the flags name it."""
  name = args.tsr_model or (None if args.tsr_checkpoint else
                            applications.DEFAULT_CONDITIONAL_MODEL)
  tsr_config, tsr_params = weights.load_model(checkpoint=args.tsr_checkpoint, name=name)
  keyframes.check_models(config, tsr_config)
  tsr_settings = diffusion_config.sampler_settings(
      tsr_config.diffusion, method=args.sampler, steps=args.steps, eta=args.eta,
      threshold=args.threshold, time_power=args.time_power)
  return keyframes.KeyframesTSR(
      pipeline.TextToVideo(config, params, settings, progress=not args.quiet),
      applications.ConditionalGenerator(tsr_config, tsr_params, tsr_settings,
                                        progress=not args.quiet))


def run(args) -> int:
  if args.list_models:
    return list_models()
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")
  prompts = read_prompts(args)
  pipeline.check_outputs(len(prompts), args.out, args.out_dir, args.also, args.xt_slice,
                         args.sheet)
  if args.strength is not None and args.init_video is None:
    raise UserError("--strength applies to --init-video (SDEdit)")
  check_sampling_args(args, len(prompts))
  check_pipeline_args(args)
  init_video = None if args.init_video is None else video_io.read_video(args.init_video)
  overrides = config_lib.parse_overrides(args.config_overrides)
  config, params = load(args, overrides)
  config, num_frames, windows = clip_length(config, args)
  upsampler = load_cascade(args, config, num_frames or config.data.num_frames)
  section = config.diffusion
  settings = diffusion_config.sampler_settings(section, method=args.sampler, steps=args.steps,
                                               eta=args.eta, threshold=args.threshold,
                                               time_power=args.time_power)
  guidance = section.guidance if args.guidance is None else args.guidance
  negative = section.negative_prompt if args.negative_prompt is None else args.negative_prompt
  strength = 1.0
  if init_video is not None:
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
  if args.pipeline == keyframes.NAME:
    videos = keyframes_tsr(args, config, params, settings)(prompts, args.seed, guidance,
                                                           negative)
  else:
    videos = pipeline.generate(config, params, prompts, settings=settings,
                               guidance_scale=guidance, seed=args.seed,
                               init_video=init_video, strength=strength,
                               negative_prompt=negative, progress=not args.quiet,
                               num_frames=num_frames, windows=windows,
                               expert=pipeline.expert_from_args(args),
                               expert_switch=args.expert_switch)
  if upsampler is not None:
    videos = upsampler(videos, prompts, args.seed, upsampler.config.diffusion.guidance)
  with runtime.shielded():  # once writing starts, Ctrl-C lets it finish
    written = pipeline.save_outputs(videos, prompts, args.seed, args.out, args.out_dir,
                                    args.also, args.xt_slice, args.sheet)
  for path in written:
    print(path)
  runtime.check_interrupt("interrupted; the outputs were complete and are written")
  return 0
