"""`lumiere stylize`: stylized generation with interpolated style weights."""

from lumiere_jax.commands._pending import not_available

HELP = "Stylized generation with interpolated style weights."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("stylize", "the stylization issue")
