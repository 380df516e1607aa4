"""`lumiere generate`: text-to-video generation."""

from lumiere_jax.commands._pending import not_available

HELP = "Text-to-video generation."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("generate", "the diffusion issue")
