"""Defaults of the `config.train` section (optimizer, schedule, checkpointing, logging).

Compute precision and rematerialisation live in `config.model` (`dtype`, `remat`): they
change the model's program, not the training loop.
"""

import ml_collections

from lumiere_jax.errors import ConfigError
from lumiere_jax.models import build
from lumiere_jax.train import grounding
from lumiere_jax.train.optimizer import learning_rate_scales


def default_train_config() -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict()
  # Top-level parameter groups this stage trains ('backbone', 'temporal', 'text'); the rest
  # is frozen: no weight gradients, no optimizer state (models/build.py:split_trainable).
  train.trainable = ("temporal",)
  # Where frozen (and any other pre-trained) groups come from: a workdir of an earlier
  # stage, its checkpoints/ folder or one step folder, or model:NAME for a shipped model
  # (its weights: `lumiere generate --list-models`). Groups found there are loaded;
  # groups it lacks (the temporal layers of a t2i checkpoint) start from their init.
  train.init_checkpoint = ""
  # ("GROUP=DIR", ...): those groups from DIR instead of init_checkpoint, e.g.
  # ("temporal=RUNS/t2v",) or ("temporal=model:shapes_t2v",) to put trained temporal
  # layers over a newer backbone (as the paper's stylized generation swaps the backbone
  # under them). Not in the paper.
  train.init_group_checkpoints = ()
  train.init_from_ema = True  # load the earlier stage's EMA weights, not its raw ones
  # Frozen groups that may stay at their seeded random init when no checkpoint provides
  # them: ('text',) makes the text encoder a fixed random transformer, the stand-in for
  # Imagen's and Lumiere's frozen pre-trained T5 (it keeps every caption word apart; a
  # text encoder trained with the T2I backbone on single frames learns to drop the motion
  # words, docs/learning_record.md). Every other frozen group must come from
  # init_checkpoint.
  train.frozen_at_init = ()
  train.data_dir = ""         # a dataset built by `lumiere data build`
  train.num_steps = 1000

  # AdamW with linear warmup then cosine decay to end_learning_rate_fraction * peak.
  train.learning_rate = 1e-4
  train.warmup_steps = 100
  train.end_learning_rate_fraction = 0.1
  train.adam_b1 = 0.9
  train.adam_b2 = 0.99
  train.adam_eps = 1e-8
  train.weight_decay = 0.01  # not applied to biases and norm scales (ndim < 2)
  # ("GROUP=FACTOR", ...): that trainable group's updates (so its learning rate) times
  # FACTOR, e.g. ("adapter=20",) for a new zero-initialised group trained with a
  # pre-trained model at a fine-tuning rate.
  train.learning_rate_scales = ()
  # Cross-attention grounding (train/grounding.py; not in the paper): this weight times
  # of what each object reads of the two objects' words, the share of the other's, on
  # two-object captions of the shapes grammar at training times t <= grounding_t_max.
  # With model.temporal.caption_parts = 2, on maps that read the part tokens, of what each
  # object reads of the two part tokens, the share of the other's.
  train.grounding_weight = 0.0
  train.grounding_t_max = 1.0
  # The parameter groups whose cross-attention maps the loss reads (() = every group's),
  # e.g. ("film_pool",) for the conv blocks' per-position caption pools alone.
  train.grounding_groups = ()
  # The word roles whose share counts, each on its own, averaged: ("motion",) asks each
  # object's positions to read their own motion words, whatever else they read.
  train.grounding_roles = ("colour", "shape", "motion")
  train.grad_clip_norm = 1.0
  train.ema_decay = 0.999

  # A non-finite loss, gradient norm or update norm skips the update (counted); this many
  # in a row stop the run.
  train.max_nonfinite_steps = 10

  train.log_every = 50
  train.checkpoint_every = 500
  train.keep_checkpoints = 3
  train.progress_bar = True
  # jax.profiler trace of profile_steps steps starting after profile_start_step steps
  # (0 steps = off), written to WORKDIR/profile.
  train.profile_start_step = 10
  train.profile_steps = 0
  # Peak FLOP/s of one device for MFU; 0 = look the device kind up in a built-in table
  # (MFU is left out where the kind is unknown, e.g. CPUs).
  train.peak_flops_per_device = 0.0
  return train




def validate_train_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first `train.*` field the loop cannot use."""
  t = config.train

  def check(ok, field, allowed):
    if not ok:
      raise ConfigError(f"train.{field}={t[field]!r} is invalid; allowed: {allowed}")

  groups = build.param_groups(config.model)
  check(len(t.trainable) >= 1 and set(t.trainable) <= set(groups), "trainable",
        f"a non-empty subset of {groups} (model.kind={config.model.kind!r})")
  # A trainable group named here is simply trained (overriding `trainable` alone works).
  check(set(t.frozen_at_init) <= set(groups), "frozen_at_init", f"a subset of {groups}")
  named = [entry.partition("=") for entry in t.init_group_checkpoints]
  check(all(isinstance(e, str) for e in t.init_group_checkpoints)
        and all(sep and group in groups and path for group, sep, path in named)
        and len({group for group, _, _ in named}) == len(named),
        "init_group_checkpoints", f"('GROUP=DIR', ...) with each GROUP once, one of {groups}")
  check(all(isinstance(e, str) for e in t.learning_rate_scales)
        and len(learning_rate_scales(t)) == len(t.learning_rate_scales)
        and all(g in t.trainable and f > 0 for g, f in learning_rate_scales(t).items()),
        "learning_rate_scales", f"('GROUP=FACTOR', ...), each GROUP once, one of "
        f"train.trainable={tuple(t.trainable)}, FACTOR > 0")
  for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                "max_nonfinite_steps"):
    check(t[field] >= 1, field, "an integer >= 1")
  check(t.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
  check(t.learning_rate > 0, "learning_rate", "a number > 0")
  check(0 <= t.end_learning_rate_fraction <= 1, "end_learning_rate_fraction", "[0, 1]")
  check(0 <= t.ema_decay < 1, "ema_decay", "[0, 1)")
  check(t.grad_clip_norm > 0, "grad_clip_norm", "a number > 0")
  check(t.grounding_weight >= 0, "grounding_weight", "a number >= 0 (0 = off)")
  check(0 < t.grounding_t_max <= 1, "grounding_t_max", "(0, 1]")
  if t.grounding_weight > 0:
    check(config.model.kind == "stunet", "grounding_weight", "0 for an image model")
    grounding.vocabulary_tables(build.tokenizer(config))
    check(len(t.grounding_roles) >= 1 and set(t.grounding_roles) <= set(grounding.ROLES),
          "grounding_roles", f"a non-empty subset of {grounding.ROLES}")
    mapped = [g for g in build.param_groups(config.model) if g in grounding.MAP_GROUPS]
    check(all(g in mapped for g in t.grounding_groups), "grounding_groups",
          f"groups of this model with cross-attention maps, from {tuple(mapped)}")
  check(t.weight_decay >= 0, "weight_decay", "a number >= 0")
  check(t.profile_steps >= 0, "profile_steps", "an integer >= 0 (0 = no trace)")
  check(t.peak_flops_per_device >= 0, "peak_flops_per_device",
        "FLOP/s >= 0 (0 = from the device kind)")
