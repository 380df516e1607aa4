"""`lumiere bench`: benchmark train and sampling steps (time, FLOPs, MFU, memory)."""

from lumiere_jax.commands._pending import not_available

HELP = "Benchmark train and sampling steps (time, FLOPs, MFU, memory)."


def add_arguments(parser):
  del parser


def run(args):
  del args
  not_available("bench", "the performance issue")
