"""Sampling driven from the host (pipelines/stepped.py): the same result as the fused
`samplers.sample` loop for every sampler and for SDEdit (to float rounding); progress
and stop handled between steps; no host callback in the compiled programs, so the
persistent compilation cache holds them across processes."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.diffusion import analytic, samplers, schedules
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.pipelines import stepped

SCHEDULE = schedules.cosine_schedule()
DATA = analytic.GaussianMixture(
    weights=np.array([0.3, 0.7]),
    means=np.array([[-0.6, 0.2], [0.5, -0.1]]),
    covariances=np.array([[[0.02, 0.0], [0.0, 0.05]], [[0.04, 0.01], [0.01, 0.02]]]))


def _pipeline(settings, progress=None, stop=None, sdedit=False):
  """A Stepped sampler of the mixture's exact denoiser; args: (seeds, x_clean, strength)."""
  denoiser = DATA.denoiser(SCHEDULE, settings.prediction)

  def prepare(seeds, clean, strength):
    keys = jax.vmap(jax.random.key)(seeds)
    if sdedit:
      return (), samplers.sdedit_start(clean, keys, SCHEDULE, strength)
    return (), samplers.initial_noise(keys, clean.shape)

  def problem(context, seeds, clean, strength):
    return stepped.Problem(denoiser, None, jax.vmap(jax.random.key)(seeds),
                           t_start=strength if sdedit else 1.0)

  finish = lambda context, x, *args: x * 2.0  # any output of the sample
  return stepped.Stepped(prepare, problem, finish, SCHEDULE, settings, progress, stop)


def _fused(settings, seeds, clean, strength, sdedit=False):
  denoiser = DATA.denoiser(SCHEDULE, settings.prediction)

  @jax.jit
  def run(seeds, clean, strength):
    keys = jax.vmap(jax.random.key)(seeds)
    if sdedit:
      return samplers.sdedit(denoiser, clean, None, keys, SCHEDULE, settings, strength) * 2.0
    return samplers.sample(denoiser, samplers.initial_noise(keys, clean.shape), None, keys,
                           SCHEDULE, settings) * 2.0

  return np.asarray(run(seeds, clean, strength))


ARGS = (np.arange(16, dtype=np.int32), np.full((16, 2), 0.25, np.float32), np.float32(0.6))


@pytest.mark.parametrize("settings", [
    SamplerSettings("dpmpp", 12, prediction="v", threshold="static"),
    SamplerSettings("dpmpp", 9, prediction="eps", time_power=2.0),
    SamplerSettings("ddim", 10, eta=0.5, prediction="x0"),
    SamplerSettings("ddpm", 7),
])
@pytest.mark.parametrize("sdedit", [False, True])
def test_stepped_sampling_equals_the_fused_loop(settings, sdedit):
  """The same steps; XLA fuses a step inside a loop and alone differently, which may
  round the last bit differently (seen: 1e-7 of values ~0.1)."""
  out = np.asarray(_pipeline(settings, sdedit=sdedit)(*ARGS))
  np.testing.assert_allclose(out, _fused(settings, *ARGS, sdedit=sdedit), rtol=1e-5,
                             atol=1e-6)
  assert np.isfinite(out).all() and np.abs(out - ARGS[1] * 2).max() > 1e-3


class Recorder(list):
  """A progress reporter that keeps the steps it was given."""

  def __call__(self, step):
    self.append(step)

  def close(self):
    self.append("closed")


def test_progress_reports_every_step_and_programs_compile_once():
  reported, traces = Recorder(), []
  settings = SamplerSettings("dpmpp", 6)
  sampler = _pipeline(settings)
  sampler.progress = reported
  step = sampler._step  # pylint: disable=protected-access
  for seed in (0, 1):
    sampler(ARGS[0] + seed, *ARGS[1:])
    traces.append(step._cache_size())  # pylint: disable=protected-access
  assert reported == (list(range(6)) + ["closed"]) * 2
  assert traces == [1, 1]


def test_stop_ends_after_the_step_it_was_asked_in():
  asked = []

  def stop():
    asked.append(len(asked))
    return len(asked) >= 3

  reported = Recorder()
  sampler = _pipeline(SamplerSettings("ddim", 50), stop=stop)
  sampler.progress = reported
  assert sampler(*ARGS) is None
  assert asked == [0, 1, 2] and reported == [0, 1, 2, "closed"]
  never = _pipeline(SamplerSettings("ddim", 50), stop=lambda: False)
  np.testing.assert_allclose(np.asarray(never(*ARGS)),
                             _fused(SamplerSettings("ddim", 50), *ARGS), rtol=1e-5, atol=1e-6)


CACHE_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from lumiere_jax import runtime
    runtime.enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    sys.path.insert(0, sys.argv[1])
    import test_stepped as t
    sampler = t._pipeline(t.SamplerSettings("dpmpp", 4), progress="sampling",
                          stop=lambda: False)
    np.save(sys.argv[2], np.asarray(sampler(*t.ARGS)))
""")


def test_a_second_process_takes_every_program_from_the_persistent_cache(tmp_path):
  """The programs hold no host callback (progress and stop run between steps), so JAX
  writes them to the persistent cache and a second process compiles nothing."""
  env = dict(os.environ, LUMIERE_COMPILATION_CACHE=str(tmp_path / "cache"),
             JAX_LOG_COMPILES="1", XLA_FLAGS="", JAX_PLATFORMS="cpu")
  tests = str(pathlib.Path(__file__).parent)
  logs = []
  for run in range(2):
    done = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, tests,
                           str(tmp_path / f"out{run}.npy")], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    logs.append(done.stderr)
  for program in ("jit_start", "jit_one_step", "jit_end"):
    assert f"Persistent compilation cache hit for '{program}'" not in logs[0]
    assert f"Persistent compilation cache hit for '{program}'" in logs[1], (program, logs[1])
  np.testing.assert_array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))
