"""Parameter counts per component of a config's model, from jax.eval_shape (no allocation).

  python benchmarks/param_count.py lumiere_base:t2v
"""

import sys

import flax

from lumiere_jax.config import load_config
from lumiere_jax.models import build


def component_table(spec: str) -> list:
  config = load_config(spec)
  params = flax.linen.meta.unbox(build.abstract_params(config))
  counts = build.params_by_component(params)
  temporal = flax.traverse_util.flatten_dict(params.get("temporal", {}))
  coarsest = len(config.model.block_out_channels) - 1
  kinds = {}
  for path, leaf in temporal.items():
    kind = _temporal_kind(path[0], coarsest)
    kinds[kind] = kinds.get(kind, 0) + leaf.size
  rows = [(name, n) for name, n in counts.items()]
  rows += [(f"temporal/{kind}", n) for kind, n in kinds.items()]
  rows.append(("total", sum(counts[k] for k in params)))
  return rows


def _temporal_kind(name: str, coarsest: int) -> str:
  """Temporal module names: blocks_{down|up}_{level}_{j}, mid_{n}, {down|up}sample_{i}."""
  if name.startswith(("downsample_", "upsample_")):
    return "temporal down/up-sampling"
  if name.startswith("mid_") or name.split("_")[2] == str(coarsest):
    return "attention inflation blocks (coarsest level)"
  return "conv inflation blocks"


def main(argv):
  for spec in argv[1:] or ["lumiere_base:t2v"]:
    print(f"| {spec} | parameters |\n|---|---:|")
    for name, n in component_table(spec):
      print(f"| {name} | {n / 1e6:,.2f}M |")


if __name__ == "__main__":
  main(sys.argv)
