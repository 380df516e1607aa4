"""`lumiere edit`: video-to-video editing with SDEdit."""

from lumiere_jax.commands._pending import add_pending_arguments, not_available, pending_help

ISSUE = "the editing issue"
HELP = pending_help("Video-to-video editing with SDEdit.", ISSUE)


def add_arguments(parser):
  add_pending_arguments(parser, "edit", ISSUE)


def run(args):
  del args
  not_available("edit", ISSUE)
