"""A pipeline's sampling as three compiled programs, the steps driven from the host.

A pipeline describes its sampling with three pure functions of its arguments `args`
(params, tokens, seeds, ...):

  prepare(*args) -> (context, x_start)   once: text encodings, conditioning, start noise
  problem(context, *args) -> Problem      inside every step: the denoiser and its inputs
  finish(context, x, *args) -> output     once: the sample as the pipeline's output

`Stepped` compiles `prepare`, one sampling step and `finish` (each once per input shape)
and runs the steps from Python, one call per step. The progress bar and Ctrl-C are
handled on the host between steps, so no compiled program holds a host callback, and
JAX's persistent compilation cache (runtime.enable_compilation_cache) can keep all three
across processes; it never stores an executable with host callbacks, so the fused
`samplers.sample` loop with its progress and stop callbacks compiled again in every
process. A step is one denoiser evaluation (a batch of 2B for guided sampling); the host
round trip between steps is small beside it (benchmarks/RESULTS.md, "Sampling").
"""

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np

from lumiere_jax.diffusion import samplers
from lumiere_jax.diffusion.progress import TqdmProgress
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.diffusion.schedules import Schedule


@dataclasses.dataclass
class Problem:
  """What one sampling step needs: the (guided) denoiser fn(x, t [B], cond), its
  conditioning, the per-example keys (ancestral samplers) and the time span."""

  denoiser: Callable
  cond: Any
  keys: Optional[jax.Array] = None
  t_start: Any = 1.0
  t_end: Any = 0.0


class Stepped:
  """Sampling with `settings` as prepare / step / finish programs (module docstring).

  Calling it with the pipeline's args returns `finish`'s output, or None when `stop()`
  said yes after a step (Ctrl-C: the caller reports it and writes nothing)."""

  def __init__(self, prepare: Callable, problem: Callable, finish: Callable,
               schedule: Schedule, settings: SamplerSettings,
               progress: Optional[str] = None, stop: Optional[Callable[[], bool]] = None):
    self.settings = settings
    self.progress = None if progress is None else TqdmProgress(settings.steps, progress)
    self.stop = stop

    def start(*args):
      context, x = prepare(*args)
      return context, samplers.start_state(x, settings)

    def one_step(i, state, context, *args):
      p = problem(context, *args)
      return samplers.step(p.denoiser, state, i, p.cond, p.keys, schedule, settings,
                           t_start=p.t_start, t_end=p.t_end)

    def end(state, context, *args):
      return finish(context, samplers.state_sample(state), *args)

    self._start = jax.jit(start)
    self._step = jax.jit(one_step, donate_argnums=1)
    self._finish = jax.jit(end)

  def __call__(self, *args):
    args = jax.device_put(args)  # host arrays cross once, not once per step
    context, state = self._start(*args)
    try:
      for i in range(self.settings.steps):
        state = self._step(np.int32(i), state, context, *args)
        if self.progress is not None or self.stop is not None:
          jax.block_until_ready(state)  # report and ask once the step is done
        if self.progress is not None:
          self.progress(i)
        if self.stop is not None and self.stop():
          return None
    finally:
      if self.progress is not None:
        self.progress.close()  # a loop ended early leaves its bar open
    return self._finish(state, context, *args)
