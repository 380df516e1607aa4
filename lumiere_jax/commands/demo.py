"""`lumiere demo`: train-free demo with the shipped tiny models."""

from lumiere_jax.commands._pending import not_available

HELP = "Train-free demo with the shipped tiny models."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("demo", "the shipped-models issue")
