"""Evaluators, looked up by name behind `lumiere eval` (each module has HELP,
add_arguments(parser) and run(args))."""

from lumiere_jax.evaluation import apps_eval, compare, probe, shapes_cli, ssr_eval

EVALUATORS = {"shapes": shapes_cli, "probe": probe, "compare": compare,
              "apps": apps_eval, "ssr": ssr_eval}
