"""Performance measurement shared by `lumiere bench` and the scripts in benchmarks/:
analytic model FLOPs (flops), compiled memory (memory), timing of the real train and
sampling steps with MFU and the bench presets (timing), and the lumiere-pytorch peer's
STUNet rebuilt in Flax for the side-by-side comparison (peer_unet)."""
