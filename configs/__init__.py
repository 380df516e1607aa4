"""The shipped configs, one file per model family with `get_config(variant)`; installed
with the package as `lumiere_jax.configs` (setup.cfg), so `--config NAME[:VARIANT]` finds
them from any working directory."""
