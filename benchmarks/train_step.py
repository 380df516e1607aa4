"""Train-step time of the t2i and t2v stages, and the t2v step against a whole-model step.

Each case compiles the real train step (train/step.py: diffusion loss, AdamW, EMA,
non-finite guard) for one config, runs --warmup steps, then times --steps steps on a
fixed random batch (data loading excluded) and reports the median. The "t2v whole
model" case is the same STUNet with every group trainable: the difference to "t2v" is
what freezing the backbone and text encoder saves (no weight gradients, no optimizer
state for them).

  python benchmarks/train_step.py                      # shapes_tiny, one device
  python benchmarks/train_step.py --steps 10 --json /tmp/train_step.json
  python benchmarks/train_step.py --config shapes_tiny --override data.batch_size=4
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from lumiere_jax.bench import flops as flops_lib
from lumiere_jax.config import load_config
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.train import optimizer as optimizer_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.loss import make_loss_fn

CASES = (("t2i", "t2i", ()),
         ("t2v", "t2v", ()),
         ("t2v whole model", "t2v", ("train.trainable=('backbone','temporal','text')",)))


def random_batch(config) -> dict:
  rng = np.random.default_rng(0)
  b, r = config.data.batch_size, config.data.resolution
  pixels = (b, r, r, 3) if config.model.kind == "unet2d" else (b, config.data.num_frames, r, r, 3)
  name = "image" if config.model.kind == "unet2d" else "video"
  return {name: rng.integers(0, 256, pixels, dtype=np.uint8),
          "tokens": rng.integers(3, config.text.vocab_size, (b, config.text.max_length),
                                 dtype=np.int32)}


def time_case(config, steps: int, warmup: int) -> dict:
  mesh = make_mesh(config.mesh)
  layout = state_lib.Layout(config, mesh, optimizer_lib.make_optimizer(config.train))
  jitted = step_lib.jit_train_step(config, mesh, make_loss_fn(config), layout.optimizer,
                                   layout.state_shardings)
  state = state_lib.init_state(layout, jax.random.key(0))
  batch = jax.device_put(random_batch(config), step_lib.batch_sharding(config, mesh))
  rng = jax.device_put(jax.random.key(1), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  start = time.perf_counter()
  lowered, compiled = step_lib.compile_train_step(config, mesh, jitted, state, batch, rng)
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  model_flops = flops_lib.model_flops(config, config.data.batch_size).train_step
  return {"compile_s": round(compile_s, 1), "step_s": round(step_s, 4),
          "examples_per_s": round(config.data.batch_size / step_s, 2),
          "model_flops": model_flops,
          "xla_flops": compiled.cost_analysis().get("flops"),
          "model_gflops_per_s": round(model_flops / step_s / 1e9, 2),
          "trainable_params": sum(int(np.prod(p.shape)) for p in
                                  jax.tree_util.tree_leaves(layout.abstract_state.params)),
          "loss": float(metrics["loss"])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="shapes_tiny")
  parser.add_argument("--override", action="append", default=[],
                      help="config override a.b=value, applied to every case")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  results = []
  for name, variant, overrides in CASES:
    config = load_config(f"{args.config}:{variant}", [*args.override, *overrides])
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
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
