"""Building models from configs, initialising and inflating parameters, and the one
function that labels every parameter frozen or trainable.

The full parameter tree of a model is
  {'backbone': UNet2D params, 'temporal': STUNet temporal layers (STUNet only),
   'text': text encoder params}
and a stage's `config.train.trainable` names the top-level entries it trains.
"""

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.models import text as text_lib
from lumiere_jax.models.stunet import STUNet, TemporalSpec
from lumiere_jax.models.unet2d import UNet2D, UNetSpec

TRAINABLE, FROZEN = "trainable", "frozen"


class ImageDenoiser(nn.Module):
  """The T2I model as a denoiser: x [B, H, W, C] -> [B, H, W, C]; params {'backbone'}."""

  unet: UNetSpec

  @nn.compact
  def __call__(self, x, timesteps, context, context_mask):
    return UNet2D(self.unet, name="backbone")(x, timesteps, context, context_mask)


def build_denoiser(model_config) -> nn.Module:
  unet = UNetSpec.from_config(model_config)
  if model_config.kind == "stunet":
    return STUNet(unet, TemporalSpec.from_config(model_config.temporal))
  return ImageDenoiser(unet)


def build_text_encoder(config) -> text_lib.TextEncoder:
  return text_lib.text_encoder_from_config(config.text, jnp.dtype(config.model.dtype))


def tokenizer(config) -> text_lib.Tokenizer:
  return text_lib.tokenizer_from_config(config.text)


def denoiser_input_shape(config, batch: int) -> tuple:
  r, c = config.data.resolution, config.model.in_channels
  if config.model.kind == "stunet":
    return (batch, config.data.num_frames, r, r, c)
  return (batch, r, r, c)


def example_inputs(config, batch: int = 1):
  """Zero inputs of the right shapes and dtypes for init and eval_shape."""
  x = jnp.zeros(denoiser_input_shape(config, batch), jnp.float32)
  timesteps = jnp.zeros((batch,), jnp.float32)
  context = jnp.zeros((batch, config.text.max_length, config.text.width), jnp.float32)
  mask = jnp.ones((batch, config.text.max_length), bool)
  return x, timesteps, context, mask


def init_boxed_params(config, rng) -> dict:
  """Full model params, still wrapped in flax LogicallyPartitioned boxes (for specs)."""
  denoiser_rng, text_rng = jax.random.split(rng)
  params = dict(build_denoiser(config.model).init(denoiser_rng, *example_inputs(config))["params"])
  tokens = jnp.zeros((1, config.text.max_length), jnp.int32)
  params["text"] = build_text_encoder(config).init(text_rng, tokens)["params"]
  return params


def init_params(config, rng) -> dict:
  return nn.meta.unbox(init_boxed_params(config, rng))


def abstract_params(config):
  """Shapes, dtypes and logical axes of the full params, without allocating them."""
  return jax.eval_shape(lambda rng: init_boxed_params(config, rng), jax.random.key(0))


def inflate(t2i_params: dict, config, rng) -> dict:
  """STUNet params that reuse the T2I backbone (and text encoder) unchanged; only the
  temporal layers are new, initialised as LUMIERE.md prescribes."""
  if config.model.kind != "stunet":
    raise ValueError("inflate needs a config with model.kind == 'stunet'")
  fresh = jax.jit(lambda r: init_params(config, r))(rng)
  return {**fresh, "backbone": t2i_params["backbone"], "text": t2i_params["text"]}


def param_labels(params, trainable: Sequence[str]):
  """The one place that says which parameters train: a tree of 'trainable' / 'frozen'."""
  return {key: jax.tree_util.tree_map(lambda _: TRAINABLE if key in trainable else FROZEN,
                                      subtree)
          for key, subtree in params.items()}


def split_trainable(params, trainable: Sequence[str]):
  """(trainable, frozen) sub-dicts. Differentiating only the first means XLA computes no
  weight gradients for the second and the optimizer holds no state for it."""
  labels = param_labels(params, trainable)
  train = {k: v for k, v in params.items() if _top_label(labels[k]) == TRAINABLE}
  frozen = {k: v for k, v in params.items() if _top_label(labels[k]) == FROZEN}
  return train, frozen


def _top_label(label_tree) -> str:
  return jax.tree_util.tree_leaves(label_tree)[0] if jax.tree_util.tree_leaves(label_tree) \
      else FROZEN


def encode_text(config, params, prompts: Sequence[str]):
  """Prompts -> (embeddings [N, L, D] float32, mask [N, L] bool) with the built-in encoder."""
  tokens = jnp.asarray(tokenizer(config).encode(list(prompts)))
  return build_text_encoder(config).apply({"params": params["text"]}, tokens)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def params_by_component(params) -> dict:
  """Parameter counts per top-level component and per backbone block (README table)."""
  counts = {k: count_params(v) for k, v in params.items()}
  flat = flax.traverse_util.flatten_dict(params.get("backbone", {}))
  for path, leaf in flat.items():
    key = f"backbone/{path[0]}"
    counts[key] = counts.get(key, 0) + int(np.prod(leaf.shape))
  return counts
