"""Pipelines: text-to-video generation (and, as they land, the conditional uses)."""
