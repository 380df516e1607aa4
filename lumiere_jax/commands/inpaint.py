"""`lumiere inpaint`: inpaint or outpaint a video inside a mask."""

from lumiere_jax.commands._pending import add_pending_arguments, not_available, pending_help

ISSUE = "the conditional-generation issue"
HELP = pending_help("Inpaint or outpaint a video inside a mask.", ISSUE)


def add_arguments(parser):
  add_pending_arguments(parser, "inpaint", ISSUE)


def run(args):
  del args
  not_available("inpaint", ISSUE)
