"""What the application commands (animate, inpaint, cinemagraph, stylize, edit) share:
the model flags, the sampling flags, checks made before any model is loaded, loading
and writing the one output clip.

Order of work in every command: flags and output path; input files read and checked;
the model's config (no weights) read and checked against them; only then the weights
are loaded and the clip sampled; the output is written atomically, shielded from Ctrl-C
once started (runtime.shielded).
"""

from lumiere_jax import config as config_lib
from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.config import finalize, load_config
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import samplers
from lumiere_jax.diffusion.samplers import SAMPLERS
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.io import video as video_io
from lumiere_jax.models import text
from lumiere_jax.pipelines import applications
from lumiere_jax.pipelines import generate as generate_pipeline

MASK_HELP = ("1 (white) = FILL: the pixels the model generates; 0 (black) = keep "
             "(--mask-means keep swaps them)")


def add_model_arguments(parser, default: str, what: str) -> None:
  """--model / --checkpoint / --config (+ --step) of the model a command runs."""
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--model", metavar="NAME",
                      help=f"a shipped {what} (default: {default}; `lumiere generate "
                           "--list-models`)")
  source.add_argument("--checkpoint", metavar="DIR",
                      help=f"a training workdir of a {what}; the EMA weights are used")
  source.add_argument("--config", metavar="SPEC",
                      help="NAME[:VARIANT] or path.py[:VARIANT]: a freshly initialised model "
                           "of this config (untrained: for development)")
  parser.add_argument("--step", type=int, metavar="N",
                      help="with --checkpoint: this step instead of the newest")


def add_prompt_and_out(parser) -> None:
  parser.add_argument("--prompt", required=True, metavar="TEXT", help="what the clip shows")
  parser.add_argument("--out", required=True, metavar="OUT",
                      help="the clip: .mp4, .gif or .npy (uint8 [T, H, W, 3]); written "
                           "atomically")


def add_request_arguments(parser, conditional: bool) -> None:
  """--prompt/--out, the model (the conditional one, or a text-to-video one) and the
  sampler flags: what every application command takes."""
  add_prompt_and_out(parser)
  if conditional:
    add_model_arguments(parser, applications.DEFAULT_CONDITIONAL_MODEL, "conditional model")
  else:
    add_model_arguments(parser, weights.DEFAULT_MODEL, "text-to-video model")
  add_sampling_arguments(parser, known_pixels=conditional)


def add_sampling_arguments(parser, known_pixels: bool = False) -> None:
  parser.add_argument("--steps", type=int, metavar="N",
                      help="sampling steps >= 1 (default: the model's diffusion.steps)")
  parser.add_argument("--sampler", choices=SAMPLERS,
                      help="default: the model's diffusion.sampler")
  parser.add_argument("--guidance", type=float, metavar="W",
                      help="classifier-free guidance scale >= 0 (default: the model's)")
  parser.add_argument("--seed", type=int, default=0, metavar="S")
  if known_pixels:
    parser.add_argument("--known-pixels", choices=diffusion_config.KNOWN_PIXEL_MODES,
                        help="'replace': the known pixels are put back at every step and "
                             "come out exactly; 'model': they are only the model's input "
                             "(default: the model's diffusion.known_pixels)")
    parser.add_argument("--dilate", type=int, metavar="PX",
                        help="with replace: grow the region to fill by PX pixels for the "
                             "replacement, so the model blends the edge (default: the "
                             "model's diffusion.known_dilation, 0)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  config_lib.accept_overrides(parser)


def add_mask_convention(parser) -> None:
  parser.add_argument("--mask-means", choices=("fill", "keep"), default="fill",
                      help="what white / 1 marks in the mask: 'fill' (default: the pixels "
                           "to generate) or 'keep' (the pixels to keep)")


def check_common(args) -> None:
  """The flags every application command has, checked before any file is read."""
  generate_pipeline.check_prompts([args.prompt])
  video_io.check_video_path(args.out)
  atomic.check_output_file(args.out, "--out")
  if args.step is not None and args.checkpoint is None:
    raise UserError("--step selects a step of --checkpoint")
  generate_pipeline.check_seed(args.seed, 1)
  if args.steps is not None and not 1 <= args.steps <= samplers.MAX_STEPS:
    raise UserError(f"--steps must be an integer >= 1 and <= {samplers.MAX_STEPS}, got "
                    f"{args.steps}")
  if args.guidance is not None:
    diffusion_config.check_guidance(args.guidance)
  if getattr(args, "dilate", None) is not None:
    if args.dilate < 0:
      raise UserError(f"--dilate must be >= 0 pixels, got {args.dilate}")


def model_config(args, default: str):
  """The config of the model the flags name, without its weights (a fresh config for
  --config). `default` is the shipped model used when none is named."""
  overrides = config_lib.parse_overrides(args.config_overrides)
  if args.config is not None:
    return load_config(args.config, overrides)
  name = args.model
  if args.checkpoint is None and name is None:
    name = default
  config = weights.model_config(checkpoint=args.checkpoint, name=name, step=args.step)
  return finalize(config.unlock(), overrides) if overrides else config


def conditional_config(args, command: str):
  """The conditional model's config, refused in one line unless it is one; the default
  model, not shipped yet, is refused with what to do instead."""
  if args.config is None and args.checkpoint is None and args.model is None and \
      applications.DEFAULT_CONDITIONAL_MODEL not in weights.manifest():
    raise UserError(f"no conditional model is shipped with this install yet "
                    f"({applications.DEFAULT_CONDITIONAL_MODEL}); train one (bash "
                    "launch/shapes_recipe.sh RUNS cond, or lumiere train --config "
                    "shapes_tiny:cond) and pass --checkpoint DIR")
  config = model_config(args, applications.DEFAULT_CONDITIONAL_MODEL)
  applications.check_conditional_config(config, command)
  return config


def check_prompt_fits(config, prompt: str) -> None:
  generate_pipeline.check_prompt_lengths(text.tokenizer_from_config(config.text), [prompt])


def load_params(args, config, default: str):
  """The weights of the model the flags name (a fresh init for --config; `default`
  when none is named)."""
  if args.config is not None:
    return generate_pipeline.fresh_params(config)
  name = args.model
  if args.checkpoint is None and name is None:
    name = default
  _, params = weights.load_model(checkpoint=args.checkpoint, name=name, step=args.step)
  return params


def sampler_settings(args, config):
  settings = diffusion_config.sampler_settings(config.diffusion, method=args.sampler,
                                               steps=args.steps)
  guidance = config.diffusion.guidance if args.guidance is None else args.guidance
  return settings, guidance


def generate_conditional(args, config, condition) -> None:
  """Loads the conditional model, samples the one clip and writes it to --out."""
  params = load_params(args, config, applications.DEFAULT_CONDITIONAL_MODEL)
  settings, guidance = sampler_settings(args, config)
  generator = applications.ConditionalGenerator(
      config, params, settings, args.known_pixels, args.dilate, progress=not args.quiet)
  videos = generator([args.prompt], condition, args.seed, guidance,
                     config.diffusion.negative_prompt)
  write(args.out, videos[0])


def write(out, video) -> None:
  with runtime.shielded():  # once writing starts, Ctrl-C lets it finish
    print(video_io.write_video(out, video))
  runtime.check_interrupt("interrupted; the output was complete and is written")
