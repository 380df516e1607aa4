"""`lumiere upsample`: spatial super-resolution of a video with temporal MultiDiffusion."""

from lumiere_jax.commands._pending import not_available

HELP = "Spatial super-resolution of a video with temporal MultiDiffusion."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("upsample", "the SSR issue")
