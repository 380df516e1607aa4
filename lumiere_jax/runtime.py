"""Process-wide JAX settings shared by the CLI and the tests.

The persistent compilation cache matters on CPU: compiling the tiny model's init alone
takes ~30 s here (its per-parameter threefry graphs dominate), so a second `lumiere`
call with the same shapes should not pay it again.
"""

import os
import pathlib

import jax

CACHE_ENV = "LUMIERE_COMPILATION_CACHE"  # a directory, or "off"


def enable_compilation_cache(default_dir: str = "~/.cache/lumiere_jax/xla") -> None:
  """Turns on JAX's persistent compilation cache (keyed by program, flags and version,
  so a stale entry is never used for a different program)."""
  where = os.environ.get(CACHE_ENV, default_dir)
  if where == "off":
    return
  path = pathlib.Path(where).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # an unwritable cache location only costs compile time
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
