"""`lumiere animate`: image-to-video with the conditional <J, C, M> model."""

from lumiere_jax.commands import _applications as common
from lumiere_jax.io import images
from lumiere_jax.pipelines import applications

HELP = "Image-to-video: animate a still image (the conditional model)."


def add_arguments(parser):
  parser.add_argument("--image", required=True, metavar="IMG",
                      help="frame 0 of the clip: .png, .jpg or .npy uint8 [H, W, 3], at the "
                           "model's frame size (it is not resized)")
  parser.add_argument("--last-image", metavar="IMG",
                      help="also fix the last frame to this image (the clip goes from one "
                           "to the other)")
  common.add_request_arguments(parser, conditional=True)


def run(args) -> int:
  common.check_common(args)
  image = images.read_image(args.image)
  last = None if args.last_image is None else images.read_image(args.last_image)
  config = common.conditional_config(args, "animate")
  common.check_prompt_fits(config, args.prompt)
  applications.check_image(config, image, f"--image {args.image}")
  if last is not None:
    applications.check_image(config, last, f"--last-image {args.last_image}")
  frames = applications.clip_shape(config)[0]
  condition = applications.animate_condition(image, frames, last)
  common.generate_conditional(args, config, condition)
  return 0
