"""Meshes, logical-axis rules and sharding specs. Model code names logical axes only;
their mapping to mesh axes comes from the config."""
