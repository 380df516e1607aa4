"""`lumiere animate`: image-to-video: animate a still image."""

from lumiere_jax.commands._pending import not_available

HELP = "Image-to-video: animate a still image."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("animate", "the conditional-generation issue")
