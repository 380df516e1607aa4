"""`lumiere data`: build and inspect datasets."""

from lumiere_jax.commands._pending import not_available

HELP = "Build and inspect datasets."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("data", "the data issue")
