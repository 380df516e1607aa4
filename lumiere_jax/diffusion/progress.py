"""A host-side tqdm bar driven from inside a compiled sampling loop.

The loop calls `jax.debug.callback(reporter, step)` once per step. The callback carries
only the step index, so no activation leaves the device, and it is unordered, so it adds
no dependency to the loop body; the cost is one host call per step, small next to a
denoiser evaluation (benchmarks/sampling.py measures it).
"""

import tqdm


class TqdmProgress:
  """Callable `reporter(step)` for `steps` steps. A new bar starts at step 0, so one
  reporter serves every call of a function compiled once."""

  def __init__(self, steps: int, desc: str = "sampling"):
    self.steps = steps
    self.desc = desc
    self.bar = None

  def __call__(self, step) -> None:
    step = int(step)
    if step == 0:
      self.close()
      self.bar = tqdm.tqdm(total=self.steps, desc=self.desc, unit="step", leave=False)
    if self.bar is None:
      return
    # Callbacks may arrive out of order or once per device; advance to the furthest step.
    self.bar.update(max(0, step + 1 - self.bar.n))
    if self.bar.n >= self.steps:
      self.close()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None
