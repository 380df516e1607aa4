"""The optimizer (global-norm clipping, then AdamW on a warmup + cosine schedule) and the
EMA decay rule. Built from `config.train`; pure optax, no state of its own."""

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to a fraction of it at the last
  step. Indexed by the number of updates applied (skipped steps do not advance it)."""
  c = train_config
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
      decay_steps=max(c.num_steps, c.warmup_steps + 1),
      end_value=c.learning_rate * c.end_learning_rate_fraction)


def _decay_mask(params):
  """Weight decay on kernels and embeddings only: decaying biases and norm scales
  towards zero fights the normalisation and helps nothing."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def learning_rate_scales(train_config) -> dict:
  """train.learning_rate_scales as {group: factor}; entries that do not parse are left
  out (validate_train_config refuses them)."""
  scales = {}
  for entry in train_config.learning_rate_scales:
    group, _, factor = str(entry).partition("=")
    try:
      scales[group] = float(factor)
    except ValueError:
      continue
  return scales


def _group_mask(group: str):
  return lambda params: {k: jax.tree_util.tree_map(lambda _: k == group, v)
                         for k, v in params.items()}


def make_optimizer(train_config) -> optax.GradientTransformation:
  """train.learning_rate_scales multiplies the updates of the groups it names; without
  any the chain is the plain one (the same optimizer state)."""
  c = train_config
  scales = learning_rate_scales(c)
  return optax.chain(
      optax.clip_by_global_norm(c.grad_clip_norm),
      optax.adamw(learning_rate_schedule(c), b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps,
                  weight_decay=c.weight_decay, mask=_decay_mask),
      *[optax.masked(optax.scale(factor), _group_mask(group))
        for group, factor in sorted(scales.items())])


def ema_decay(max_decay: float, updates):
  """min(max_decay, (1 + n) / (10 + n)) after n applied updates: early on the average
  follows the fast-moving weights instead of remembering their random init for
  ~1 / (1 - max_decay) steps (which would make short runs' EMA useless)."""
  n = jnp.asarray(updates, jnp.float32)
  return jnp.minimum(max_decay, (1.0 + n) / (10.0 + n))
