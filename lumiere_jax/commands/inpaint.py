"""`lumiere inpaint`: inpaint or outpaint a video inside a mask."""

from lumiere_jax.commands._pending import not_available

HELP = "Inpaint or outpaint a video inside a mask."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("inpaint", "the conditional-generation issue")
