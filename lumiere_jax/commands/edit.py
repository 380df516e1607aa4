"""`lumiere edit`: video-to-video editing by SDEdit (the input noised to --strength,
then denoised with the new prompt) with the text-to-video model; the same as `lumiere
generate --init-video IN --strength S`."""

from lumiere_jax import weights
from lumiere_jax.commands import _applications as common
from lumiere_jax.commands import generate as generate_command
from lumiere_jax.diffusion import samplers
from lumiere_jax.errors import UserError
from lumiere_jax.io import video as video_io
from lumiere_jax.models import conditioning
from lumiere_jax.pipelines import generate as generate_pipeline

HELP = "Video-to-video editing (SDEdit) with the text-to-video model."


def add_arguments(parser):
  parser.add_argument("--video", required=True, metavar="IN",
                      help="the clip to edit: .mp4, .gif or .npy uint8 [T, H, W, 3], with "
                           "the model's frame count and size (it is not resized)")
  parser.add_argument("--strength", type=float, default=generate_command.DEFAULT_STRENGTH,
                      metavar="S",
                      help="how much to change, in (0, 1]: the noise level the input is "
                           "taken to (near 0 returns it, 1 ignores it; default "
                           f"{generate_command.DEFAULT_STRENGTH})")
  common.add_request_arguments(parser, conditional=False)


def run(args) -> int:
  common.check_common(args)
  samplers.check_strength(args.strength)
  video = video_io.read_video(args.video)
  config = common.model_config(args, weights.DEFAULT_MODEL)
  if conditioning.kind(config.model.in_channels) != conditioning.NONE:
    raise UserError(f"edit needs a text-to-video model (model.in_channels=3), got "
                    f"model.in_channels={config.model.in_channels} (stage {config.stage!r})")
  generate_pipeline.check_request(config, [args.prompt], args.seed, 1.0, video,
                                  args.strength)
  params = common.load_params(args, config, weights.DEFAULT_MODEL)
  settings, guidance = common.sampler_settings(args, config)
  videos = generate_pipeline.generate(config, params, [args.prompt], settings=settings,
                                      guidance_scale=guidance, seed=args.seed,
                                      init_video=video, strength=args.strength,
                                      negative_prompt=config.diffusion.negative_prompt,
                                      progress=not args.quiet)
  common.write(args.out, videos[0])
  return 0
