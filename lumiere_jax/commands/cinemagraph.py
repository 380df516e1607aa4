"""`lumiere cinemagraph`: animate one region of a still image."""

from lumiere_jax.commands._pending import add_pending_arguments, not_available, pending_help

ISSUE = "the conditional-generation issue"
HELP = pending_help("Animate one region of a still image.", ISSUE)


def add_arguments(parser):
  add_pending_arguments(parser, "cinemagraph", ISSUE)


def run(args):
  del args
  not_available("cinemagraph", ISSUE)
