"""Training: train state, optimizer, sharded step, loop, checkpointing, metrics."""
