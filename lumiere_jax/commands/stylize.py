"""`lumiere stylize`: text-to-video with the backbone interpolated towards a style
model's, W = alpha W_style + (1 - alpha) W_orig; the temporal layers stay the base
model's (LUMIERE.md, stylized generation)."""

from lumiere_jax import weights
from lumiere_jax.commands import _applications as common
from lumiere_jax.errors import UserError
from lumiere_jax.pipelines import applications
from lumiere_jax.pipelines import generate as generate_pipeline

HELP = "Stylized generation: the base model with its backbone interpolated to a style's."


def add_arguments(parser):
  style = parser.add_mutually_exclusive_group(required=True)
  style.add_argument("--style", metavar="NAME",
                     help="a shipped style model (a backbone fine-tuned on a style: the "
                          "shapes_tiny:style stage, exported)")
  style.add_argument("--style-checkpoint", metavar="DIR",
                     help="a style training workdir (lumiere train --config "
                          "shapes_tiny:style); the EMA weights are used")
  parser.add_argument("--alpha", type=float, required=True, metavar="A",
                      help="how far towards the style, in [0, 1]: 0 is the base model, 1 "
                           "the style backbone plugged in (the paper picks 0.5-1 by eye; "
                           "1 tends to freeze or distort the motion)")
  common.add_request_arguments(parser, conditional=False)


def run(args) -> int:
  common.check_common(args)
  applications.check_alpha(args.alpha)
  config = common.model_config(args, weights.DEFAULT_MODEL)
  style_config = weights.model_config(checkpoint=args.style_checkpoint, name=args.style)
  if config.model.kind != "stunet":
    raise UserError(f"stylize needs a text-to-video base model; the model given is "
                    f"{config.model.kind!r} (stage {config.stage!r})")
  applications.check_style_config(config, style_config)
  common.check_prompt_fits(config, args.prompt)
  params = common.load_params(args, config, weights.DEFAULT_MODEL)
  _, style = weights.load_model(checkpoint=args.style_checkpoint, name=args.style)
  params = applications.interpolate_backbone(params, style["backbone"], args.alpha)
  settings, guidance = common.sampler_settings(args, config)
  videos = generate_pipeline.generate(config, params, [args.prompt], settings=settings,
                                      guidance_scale=guidance, seed=args.seed,
                                      negative_prompt=config.diffusion.negative_prompt,
                                      progress=not args.quiet,
                                      # the style is in this backbone, not the expert's
                                      expert_switch=0.0)
  common.write(args.out, videos[0])
  return 0
