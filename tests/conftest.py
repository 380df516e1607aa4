"""Test-session set-up: 8 forced host devices so sharding tests can build real meshes.

Must run before jax is imported anywhere. Single-device tests are unaffected: unsharded
computations run on the first device.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
