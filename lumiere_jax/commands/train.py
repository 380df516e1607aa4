"""`lumiere train`: train a stage (t2i, t2v, ssr, cond, style) from a config."""

from lumiere_jax.commands._pending import not_available

HELP = "Train a stage (t2i, t2v, ssr, cond, style) from a config."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("train", "the training issue")
