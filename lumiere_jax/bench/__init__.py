"""Performance measurement: analytic model FLOPs and compiled-memory helpers shared by
`lumiere bench` and the scripts in benchmarks/."""
