"""`lumiere edit`: video-to-video editing with SDEdit."""

from lumiere_jax.commands._pending import not_available

HELP = "Video-to-video editing with SDEdit."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("edit", "the editing issue")
