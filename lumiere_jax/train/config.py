"""Defaults of the `config.train` section (optimizer, schedule, checkpointing, logging)."""

import ml_collections


def default_train_config() -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict()
  # Top-level parameter groups this stage trains ('backbone', 'temporal', 'text'); the rest
  # is frozen: no weight gradients, no optimizer state (models/build.py:split_trainable).
  train.trainable = ("temporal",)
  return train
