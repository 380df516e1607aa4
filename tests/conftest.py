"""Test-session set-up: 8 forced host devices so sharding tests can build real meshes.

Must run before jax is imported anywhere. Single-device tests are unaffected: unsharded
computations run on the first device.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Tests compile the same tiny programs many times over (every test that initialises the
# tiny model compiles the same init); a cache shared by the session's workers compiles
# each once.
os.environ.setdefault("LUMIERE_COMPILATION_CACHE",
                      os.path.join(os.environ.get("TMPDIR", "/tmp"), "lumiere_jax_test_xla"))

from lumiere_jax import runtime  # noqa: E402  (after the environment is set)

runtime.enable_compilation_cache()
runtime.apply_cpu_defaults()  # this CPU's XLA:CPU options, as every `lumiere` command

import pytest  # noqa: E402


@pytest.fixture()
def fresh_model(monkeypatch):
  """`weights.load_model` returns a freshly initialised 4-frame tiny t2v model (2 sampling
  steps) instead of a shipped or trained one; the list records the calls."""
  from lumiere_jax import weights  # pylint: disable=g-import-not-at-top
  from lumiere_jax.config import load_config
  from lumiere_jax.pipelines import generate
  config = load_config("shapes_tiny:t2v", ["data.num_frames=4", "diffusion.steps=2"])
  params = generate.fresh_params(config)
  calls = []

  def load_model(**kwargs):
    calls.append(kwargs)
    return config, params

  monkeypatch.setattr(weights, "load_model", load_model)
  return calls
