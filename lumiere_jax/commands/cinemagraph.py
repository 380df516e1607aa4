"""`lumiere cinemagraph`: animate one region of a still image."""

from lumiere_jax.commands._pending import not_available

HELP = "Animate one region of a still image."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("cinemagraph", "the conditional-generation issue")
