"""Train-step time of the t2i and t2v stages, and the t2v step against a whole-model step.

Each case compiles the real train step (train/step.py: diffusion loss, AdamW, EMA,
non-finite guard) for one config, runs --warmup steps, then times --steps steps on a
fixed random batch (data loading excluded) and reports the median. The "t2v whole
model" case is the same STUNet with every group trainable: the difference to "t2v" is
what freezing the backbone and text encoder saves (no weight gradients, no optimizer
state for them).

  python benchmarks/train_step.py                      # shapes_tiny, one device
  python benchmarks/train_step.py --steps 10 --json /tmp/train_step.json
  python benchmarks/train_step.py --config shapes_tiny --config.data.batch_size=4
"""

import argparse
import json

import jax

from lumiere_jax.bench import flops as flops_lib
from lumiere_jax.bench import timing
from lumiere_jax import config as config_lib
from lumiere_jax.io import atomic

CASES = (("t2i", "t2i", ()),
         ("t2v", "t2v", ()),
         ("t2v whole model", "t2v", ("train.trainable=('backbone','temporal','text')",)))


def time_case(config, steps: int, warmup: int) -> dict:
  """The real train step on the config's mesh (lumiere_jax/bench/timing.py)."""
  run = timing.prepare_train_step(config, timing.config_mesh(config))
  step_s = timing.time_train_step(run, steps, warmup).median
  model_flops = flops_lib.model_flops(config, config.data.batch_size).train_step
  return {"compile_s": round(run.compile_seconds, 1), "step_s": round(step_s, 4),
          "examples_per_s": round(config.data.batch_size / step_s, 2),
          "model_flops": model_flops,
          "xla_flops": run.compiled.cost_analysis().get("flops"),
          "model_gflops_per_s": round(model_flops / step_s / 1e9, 2),
          "trainable_params": run.trainable_params,
          "loss": float(run.loss)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="shapes_tiny")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", help="also write the results here")
  config_lib.accept_overrides(parser)  # applied to every case
  args = parser.parse_args()
  given = config_lib.parse_overrides(args.config_overrides)
  results = []
  for name, variant, overrides in CASES:
    config = config_lib.load_config(f"{args.config}:{variant}", [*given, *overrides])
    result = {"case": name, "batch": config.data.batch_size,
              "frames": config.data.num_frames if config.model.kind == "stunet" else 1,
              **time_case(config, args.steps, args.warmup)}
    results.append(result)
    print(json.dumps(result), flush=True)
  frozen, whole = results[1], results[2]
  print(f"\nt2v step / whole-model step: time {frozen['step_s'] / whole['step_s']:.3f}, "
        f"model FLOPs {frozen['model_flops'] / whole['model_flops']:.3f}, "
        f"XLA FLOPs {frozen['xla_flops'] / whole['xla_flops']:.3f}")
  print("\n| case | batch | frames | compile s | step s | examples/s | model GFLOP/step |"
        " model GFLOP/s | trainable params |\n|---|---|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['case']} | {r['batch']} | {r['frames']} | {r['compile_s']} | {r['step_s']} | "
          f"{r['examples_per_s']} | {r['model_flops'] / 1e9:.2f} | {r['model_gflops_per_s']} | "
          f"{r['trainable_params']:,} |")
  print(f"\n{jax.devices()[0].device_kind}, {len(jax.devices())} device(s), jax {jax.__version__}")
  if args.json:
    atomic.write_text(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
