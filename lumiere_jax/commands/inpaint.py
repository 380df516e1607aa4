"""`lumiere inpaint`: fill a region of a video (or its border) with the conditional
<J, C, M> model."""

from lumiere_jax.commands import _applications as common
from lumiere_jax.errors import UserError
from lumiere_jax.io import images
from lumiere_jax.io import video as video_io
from lumiere_jax.pipelines import applications

HELP = "Inpainting and outpainting of a video (the conditional model)."


def add_arguments(parser):
  parser.add_argument("--video", required=True, metavar="IN",
                      help="the clip: .mp4, .gif or .npy uint8 [T, H, W, 3], with the "
                           "model's frame count and size (it is not resized)")
  region = parser.add_mutually_exclusive_group(required=True)
  region.add_argument("--mask", metavar="MASK",
                      help="the region to fill: a .png (black and white) applied to every "
                           "frame, or a .npy [T, H, W] of 0 and 1, one mask per frame; "
                           + common.MASK_HELP)
  region.add_argument("--outpaint", type=int, metavar="PIXELS",
                      help="fill a border this many pixels wide instead (a video 2 x PIXELS "
                           "smaller than the model's frames is framed by it)")
  common.add_mask_convention(parser)
  common.add_request_arguments(parser, conditional=True)


def run(args) -> int:
  common.check_common(args)
  if args.outpaint is not None and args.mask_means != "fill":
    raise UserError("--mask-means applies to --mask")
  video = video_io.read_video(args.video)
  mask = None if args.mask is None else images.read_mask(args.mask)
  config = common.conditional_config(args, "inpaint")
  common.check_prompt_fits(config, args.prompt)
  frames, resolution = applications.clip_shape(config)[:2]
  if args.outpaint is not None:
    applications.check_outpaint(args.outpaint, resolution)
    condition = applications.outpaint_condition(video, args.outpaint, resolution)
    applications.check_clip(config, condition.clip, f"--video {args.video}")
  else:
    applications.check_clip(config, video, f"--video {args.video}")
    fill = applications.check_fill_mask(mask, video.shape, f"--mask {args.mask}")
    condition = applications.inpaint_condition(video, fill if args.mask_means == "fill"
                                               else ~fill)
  common.generate_conditional(args, config, condition)
  return 0
