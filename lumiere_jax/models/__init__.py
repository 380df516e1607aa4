"""Flax (linen) models: the T2I backbone, temporal inflation, the STUNet, text encoder."""
