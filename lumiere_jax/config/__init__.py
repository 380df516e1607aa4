"""Configs: defaults (defaults.py), loading `NAME[:VARIANT]` or `PATH.py[:VARIANT]` with
`a.b=value` overrides (load.py), the `--config.a.b=VALUE` syntax every command shares
(flags.py), and validation before anything compiles (validate.py).

The config package sits above the library: it assembles the section defaults of
diffusion, train and data, and nothing in models, diffusion, parallel, data or io
imports it (tests/test_layering.py). What those layers need from a config they take as
the config's fields or as a spec built from them (e.g. models.unet2d.heads_per_level,
parallel.mesh.resolve_mesh_shape, re-exported here).
"""

from lumiere_jax.config.defaults import DEFAULT_LOGICAL_AXIS_RULES, base_config
from lumiere_jax.config.flags import accept_overrides, as_flags, parse_overrides
from lumiere_jax.config.load import (apply_overrides, config_file, config_module, finalize,
                                     load_config, parse_value, set_field, shipped_dir,
                                     shipped_names)
from lumiere_jax.config.validate import (DTYPES, MODEL_KINDS, REMAT_POLICIES,
                                         spatial_factor, temporal_factor, validate)
from lumiere_jax.models.unet2d import heads_per_level
from lumiere_jax.parallel.mesh import resolve_mesh_shape

__all__ = [
    "DEFAULT_LOGICAL_AXIS_RULES", "DTYPES", "MODEL_KINDS", "REMAT_POLICIES",
    "accept_overrides", "apply_overrides", "as_flags", "base_config", "config_file",
    "config_module", "finalize", "heads_per_level", "load_config", "parse_overrides",
    "parse_value", "resolve_mesh_shape", "set_field", "shipped_dir", "shipped_names",
    "spatial_factor", "temporal_factor", "validate",
]
