"""`lumiere eval EVALUATOR`: evaluators looked up by name.

  shapes  generate from held-out shapes prompts and judge colour, shape, motion and
          temporal consistency against ground truth rendered for the same prompts
  probe   does a t2v checkpoint read the motion word? (caption-swap loss gap,
          conditional means, text sensitivity; a minute instead of sampling)
  compare shapes reports side by side (pipelines, checkpoints) on the same prompts
  apps    the conditional model's animate, inpaint and cinemagraph on held-out prompts
  ssr     the SSR model against bicubic and bilinear upsampling (PSNR, edge sharpness)
"""

from lumiere_jax.evaluation import EVALUATORS

HELP = ("Evaluate a model: shapes (held-out prompts vs ground truth), probe (motion "
        "words), compare (shapes reports side by side).")


def add_arguments(parser):
  evaluators = parser.add_subparsers(dest="evaluator", metavar="EVALUATOR", required=True)
  for name, module in EVALUATORS.items():
    sub = evaluators.add_parser(name, help=module.HELP, description=module.HELP)
    module.add_arguments(sub)
    sub.set_defaults(_evaluator=module)


def run(args) -> int:
  return args._evaluator.run(args)
