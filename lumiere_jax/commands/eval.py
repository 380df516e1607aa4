"""`lumiere eval`: evaluate a checkpoint on the synthetic domain."""

from lumiere_jax.commands._pending import not_available

HELP = "Evaluate a checkpoint on the synthetic domain."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("eval", "the evaluation issue")
