"""Seconds per generated video for the tiny STUNet (16 x 32 x 32, 64 steps, guided), with
compile time reported separately, on whatever machine runs it.

  python benchmarks/sampling.py                          # shapes_tiny:t2v, dpmpp, 64 steps
  python benchmarks/sampling.py --batch 4 --repeats 2 --sampler ddpm

What is timed is the real generation program (pipelines/generate.py: text encoding, noise,
classifier-free guided sampling loop, uint8 conversion), i.e. 2 x batch denoiser
evaluations per step. Also reported:
  * the same loop with the tqdm progress callback on, to show what progress costs, and
    the callback's cost per step measured on its own (a 2000-step loop around a trivial
    denoiser, with and without it), which is precise even on a busy machine;
  * the same for the Ctrl-C check (the `stop` host callback that ends sampling between
    steps, always on in the pipeline): the loop without it, and its cost per step;
  * 64 separate calls of the jitted guided denoiser, to show what the compiled loop saves
    over a Python loop that returns to the host every step.
The three are timed interleaved (medians reported), so that load from other processes
on a shared machine affects them alike; the load average is printed with the results.
Prints one JSON line per repeat and a summary.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="shapes_tiny:t2v")
  parser.add_argument("--sampler", default="dpmpp", choices=("ddpm", "ddim", "dpmpp"))
  parser.add_argument("--steps", type=int, default=64)
  parser.add_argument("--batch", type=int, default=1, help="videos per call")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls after compiling")
  return parser.parse_args()


@contextlib.contextmanager
def compile_seconds():
  """Sums the time jax spends tracing and compiling inside the block."""
  import jax
  events = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/backend_compile_duration")
  total = [0.0]

  def listener(event, duration, **kwargs):
    del kwargs
    if event in events:
      total[0] += duration

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield total
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def first_call(model, prompts):
  """(trace + compile seconds, wall seconds) of the call that compiles the program."""
  with compile_seconds() as compiled:
    start = time.perf_counter()
    model(prompts, seed=0, guidance_scale=3.0)
    return compiled[0], time.perf_counter() - start


def timed_call(model, prompts, seed):
  start = time.perf_counter()
  model(prompts, seed=seed, guidance_scale=3.0)
  return time.perf_counter() - start


def python_loop(model, batch, steps):
  """fn() -> seconds for `steps` calls of the jitted guided denoiser from Python, each
  waited for (a host-driven loop that reads progress): the baseline the compiled loop
  is compared with. Compiles on creation."""
  import jax
  import numpy as np
  from lumiere_jax.diffusion import denoisers, guidance

  net, params = model.model, model.params
  cond = net.encode(params["text"], net.tokenize(["a red circle"] * batch))
  uncond = net.encode(params["text"], net.tokenize([""]))
  guided = jax.jit(lambda p, x, t: guidance.classifier_free_guidance(
      denoisers.bind(net.denoise, p), uncond, 3.0)(x, t, cond))
  x0 = net.to_model_layout(np.zeros((batch,) + model.video_shape, np.float32))
  t = np.full((batch,), 0.5, np.float32)
  jax.block_until_ready(guided(params, x0, t))

  def run():
    start = time.perf_counter()
    x = x0
    for _ in range(steps):
      x = jax.block_until_ready(guided(params, x, t))
    return time.perf_counter() - start

  return run


def progress_overhead_per_step(steps=2000, repeats=5):
  """Seconds the progress callback adds per step: loops of `steps` steps around a
  denoiser that costs almost nothing, with and without it (min over interleaved
  repeats)."""
  from lumiere_jax.diffusion.progress import TqdmProgress
  return callback_overhead_per_step({"progress": TqdmProgress(steps, "overhead")}, steps,
                                    repeats)


def stop_overhead_per_step(steps=2000, repeats=5):
  """Seconds the Ctrl-C check (`stop`, asked on the host after every step) adds per
  step, measured as progress_overhead_per_step."""
  from lumiere_jax import runtime
  return callback_overhead_per_step({"stop": runtime.interrupt_requested}, steps, repeats)


def callback_overhead_per_step(callback: dict, steps: int, repeats: int) -> float:
  import jax
  from lumiere_jax.diffusion import samplers, schedules

  settings = samplers.SamplerSettings("ddim", steps)
  x = jax.numpy.zeros((1, 16, 32, 32, 3))
  runs = {with_it: jax.jit(lambda x, kw=(callback if with_it else {}): samplers.sample(
      lambda z, t, c: 0.5 * z, x, None, None, schedules.cosine_schedule(), settings, **kw))
          for with_it in (False, True)}
  best = {}
  for fn in runs.values():
    jax.block_until_ready(fn(x))
  for _ in range(repeats):
    for with_it, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(x))
      jax.effects_barrier()
      elapsed = time.perf_counter() - start
      best[with_it] = min(best.get(with_it, elapsed), elapsed)
  return (best[True] - best[False]) / steps


def main():
  args = parse_args()
  import jax

  from lumiere_jax.config import load_config
  from lumiere_jax.diffusion.samplers import SamplerSettings
  from lumiere_jax.pipelines import generate as pipeline

  config = load_config(args.config)
  machine = (f"{platform.machine()} {os.cpu_count()} CPUs, {jax.devices()[0].device_kind}, "
             f"jax {jax.__version__}")
  start = time.perf_counter()
  params = jax.block_until_ready(pipeline.fresh_params(config))
  init_seconds = time.perf_counter() - start
  settings = SamplerSettings(args.sampler, args.steps, threshold="dynamic")
  prompts = ["a red circle moving left", "a blue square growing", "a white triangle moving up",
             "a green circle bouncing around"] * args.batch
  prompts = prompts[:args.batch]
  shape = "x".join(map(str, pipeline.video_shape(config)[:3]))
  summary = {"machine": machine, "load_average_before": [round(x, 2) for x in os.getloadavg()],
             "config": args.config, "video": shape,
             "sampler": args.sampler, "steps": args.steps, "batch": args.batch,
             "model_init_s": round(init_seconds, 2)}
  models = {name: pipeline.TextToVideo(config, params, settings, progress=name == "progress")
            for name in ("", "progress", "no_stop")}
  models["no_stop"].stop = None  # read when the program is traced, at its first call
  for name, model in models.items():
    compiled, first = first_call(model, prompts)
    summary[f"compile_s{'_' + name if name else ''}"] = round(compiled, 2)
    summary[f"first_call_s{'_' + name if name else ''}"] = round(first, 2)
  baseline = python_loop(models[""], args.batch, args.steps)
  # Interleaved, so that load from other processes drifts into all of them alike.
  times = {"loop": [], "loop_progress": [], "loop_no_stop": [], "python_loop": []}
  for i in range(args.repeats):
    times["loop"].append(timed_call(models[""], prompts, seed=100 * (i + 1)))
    times["loop_progress"].append(timed_call(models["progress"], prompts,
                                             seed=100 * (i + 1)))
    times["loop_no_stop"].append(timed_call(models["no_stop"], prompts, seed=100 * (i + 1)))
    times["python_loop"].append(baseline())
    print(json.dumps({"repeat": i, **times}), flush=True)
  for name, values in times.items():
    summary[f"s_per_video_{name}"] = round(statistics.median(values) / args.batch, 2)
  summary["progress_callback_us_per_step"] = round(1e6 * progress_overhead_per_step(), 1)
  summary["stop_callback_us_per_step"] = round(1e6 * stop_overhead_per_step(), 1)
  summary["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
