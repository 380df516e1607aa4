"""Performance measurement shared by `lumiere bench` and the scripts in benchmarks/:
analytic model FLOPs (flops), compiled memory (memory), timing of the real train and
sampling steps with MFU and the bench presets (timing), and the printed table (report).
The lumiere-pytorch peer's model rebuilt in Flax lives beside its side-by-side script in
benchmarks/peer/, outside the package."""
