"""`lumiere cinemagraph`: animate one region of a still image with the conditional
<J, C, M> model; the rest of the frame stays the image."""

import pathlib

from lumiere_jax.commands import _applications as common
from lumiere_jax.errors import UserError
from lumiere_jax.io import images
from lumiere_jax.pipelines import applications

HELP = "Cinemagraphs: animate one region of a still image (the conditional model)."


def add_arguments(parser):
  parser.add_argument("--image", required=True, metavar="IMG",
                      help="the still: .png, .jpg or .npy uint8 [H, W, 3], at the model's "
                           "frame size (it is not resized)")
  region = parser.add_mutually_exclusive_group(required=True)
  region.add_argument("--region", metavar="x0,y0,x1,y1",
                      help="the box that moves, in pixels (x1 and y1 exclusive)")
  region.add_argument("--mask", metavar="MASK.png",
                      help="the region that moves, as a black-and-white .png; "
                           + common.MASK_HELP)
  common.add_mask_convention(parser)
  common.add_request_arguments(parser, conditional=True)


def run(args) -> int:
  common.check_common(args)
  region = None if args.region is None else applications.parse_region(args.region)
  if args.mask is not None and pathlib.Path(args.mask).suffix.lower() != ".png":
    raise UserError(f"--mask {args.mask}: a cinemagraph's region is one black-and-white "
                    ".png for the still image")
  if args.region is not None and args.mask_means != "fill":
    raise UserError("--mask-means applies to --mask")
  image = images.read_image(args.image)
  mask = None if args.mask is None else images.read_mask(args.mask)
  config = common.conditional_config(args, "cinemagraph")
  common.check_prompt_fits(config, args.prompt)
  applications.check_image(config, image, f"--image {args.image}")
  frames, height, width = applications.clip_shape(config)[:3]
  if region is not None:
    applications.check_region(region, height, width)
    moving = applications.region_fill(region, height, width)
  else:
    moving = applications.check_fill_mask(mask, (1, height, width), f"--mask {args.mask}")[0]
    moving = moving if args.mask_means == "fill" else ~moving
  condition = applications.cinemagraph_condition(image, frames, moving)
  common.generate_conditional(args, config, condition)
  return 0
