"""`lumiere stylize`: stylized generation with interpolated style weights."""

from lumiere_jax.commands._pending import add_pending_arguments, not_available, pending_help

ISSUE = "the stylization issue"
HELP = pending_help("Stylized generation with interpolated style weights.", ISSUE)


def add_arguments(parser):
  add_pending_arguments(parser, "stylize", ISSUE)


def run(args):
  del args
  not_available("stylize", ISSUE)
