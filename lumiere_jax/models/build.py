"""Building models from configs, initialising and inflating parameters, and the one
function that labels every parameter frozen or trainable.

`Model(config)` is the model object, built once at the edge from a config: it tokenizes
and encodes prompts, denoises, says what input it takes (clip shape, conditioning
channels) and which parameter groups it has. Training, the pipelines and the benchmarks
all use it instead of reading `model.kind` and `model.in_channels` themselves.

The full parameter tree of a model is
  {'backbone': UNet2D params, 'temporal': STUNet temporal layers (STUNet only),
   'adapter': the STUNet's caption adapter (model.temporal.text_adapter_layers > 0 only),
   'local_film': the conv blocks' per-position FiLMs (model.temporal.local_film only),
   'film_pool': their per-position caption pools (model.temporal.film_pooling="attention"),
   'level_attention': attention after the conv blocks of model.temporal.attention_levels,
   'text': text encoder params}
and a stage's `config.train.trainable` names the top-level entries it trains.
"""

from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.diffusion import denoisers
from lumiere_jax.models import conditioning as cond_lib
from lumiere_jax.models import text as text_lib
from lumiere_jax.models.stunet import STUNet, TemporalSpec
from lumiere_jax.models.unet2d import UNet2D, UNetSpec

TRAINABLE, FROZEN = "trainable", "frozen"
VIDEO_GROUPS = ("backbone", "temporal", "text")
IMAGE_GROUPS = ("backbone", "text")


class ImageDenoiser(nn.Module):
  """The T2I model as a denoiser: x [B, H, W, C] -> [B, H, W, C]; params {'backbone'}."""

  unet: UNetSpec

  @nn.compact
  def __call__(self, x, timesteps, context, context_mask, noise_level=None):
    return UNet2D(self.unet, name="backbone")(x, timesteps, context, context_mask,
                                              noise_level)


def build_denoiser(model_config) -> nn.Module:
  unet = UNetSpec.from_config(model_config)
  if model_config.kind == "stunet":
    return STUNet(unet, TemporalSpec.from_config(model_config.temporal))
  return ImageDenoiser(unet)


def param_groups(model_config) -> tuple:
  """The top-level parameter groups of the model a config builds."""
  if model_config.kind != "stunet":
    return IMAGE_GROUPS
  t = model_config.temporal
  return (VIDEO_GROUPS + (("adapter",) if t.text_adapter_layers else ())
          + (("local_film",) if t.get("local_film", False) else ())
          + (("film_pool",) if t.get("film_pooling", "mean") == "attention" else ())
          + (("level_attention",) if t.get("attention_levels", ()) else ()))


def build_text_encoder(config) -> text_lib.TextEncoder:
  return text_lib.text_encoder_from_config(config.text, jnp.dtype(config.model.dtype))


def caption_drop_words(config) -> tuple:
  """The words a STUNet's temporal layers do not read (model.temporal.caption_drop_words)."""
  if config.model.kind != "stunet":
    return ()
  return tuple(config.model.temporal.get("caption_drop_words", ()))


def caption_parts(config) -> tuple:
  """(split word, parts) of the temporal layers' caption (model.temporal.caption_parts);
  ("", 0) where they read it whole."""
  if config.model.kind != "stunet" or not config.model.temporal.get("caption_parts", 0):
    return "", 0
  temporal = config.model.temporal
  return temporal.get("caption_split_word", "and"), int(temporal.caption_parts)


def tokenizer(config):
  """The caption tokenizer: ids [N, L], or [N, V L] (text_lib.CaptionViews) where the
  temporal layers read a caption of their own or its parts."""
  return text_lib.tokenizer_from_config(config.text, caption_drop_words(config),
                                        *caption_parts(config))


def context_length(config) -> int:
  """Tokens of the conditioning the denoiser reads: text.max_length per caption view."""
  return config.text.max_length * tokenizer(config).views


def denoiser_input_shape(config, batch: int) -> tuple:
  r, c = config.data.resolution, config.model.in_channels
  if config.model.kind == "stunet":
    return (batch, config.data.num_frames, r, r, c)
  return (batch, r, r, c)


def example_inputs(config, batch: int = 1):
  """Zero inputs of the right shapes and dtypes for init and eval_shape."""
  x = jnp.zeros(denoiser_input_shape(config, batch), jnp.float32)
  timesteps = jnp.zeros((batch,), jnp.float32)
  context = jnp.zeros((batch, context_length(config), config.text.width), jnp.float32)
  mask = jnp.ones((batch, context_length(config)), bool)
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


def encode_tokens(text_encoder, text_params, tokens, views: int = 1) -> tuple:
  """Token ids [N, views * L] -> (embeddings [N, views * L, D], mask [N, views * L]), each
  caption view encoded on its own (text_lib.CaptionViews)."""
  parts = [text_encoder.apply({"params": text_params}, part)
           for part in text_lib.split_views(tokens, views)]
  if len(parts) == 1:
    return parts[0]
  return (jnp.concatenate([e for e, _ in parts], axis=1),
          jnp.concatenate([m for _, m in parts], axis=1))


def encode_text(config, params, prompts: Sequence[str]):
  """Prompts -> (embeddings [N, L, D] float32, mask [N, L] bool) with the built-in encoder."""
  tok = tokenizer(config)
  return encode_tokens(build_text_encoder(config), params["text"],
                       jnp.asarray(tok.encode(list(prompts))), tok.views)


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


class Model:
  """One model, built once from a (validated) config.

  Layout: a video model (STUNet) takes clips [B, T, H, W, C]; an image model (the T2I
  U-Net) takes frames [B, H, W, C] and is seen from outside as making 1-frame clips.
  Parameters: the full tree {'backbone'[, 'temporal'], 'text'}; `denoise` takes it whole.
  """

  def __init__(self, config):
    self.config = config
    self.is_video = config.model.kind == "stunet"
    self.frames = config.data.num_frames if self.is_video else 1
    self.resolution = config.data.resolution
    self.in_channels = config.model.in_channels
    self.conditioning = cond_lib.kind(self.in_channels)
    self.takes_noise_level = cond_lib.takes_noise_level(self.in_channels)
    self.param_groups = param_groups(config.model)
    self.tokenizer = tokenizer(config)
    self.text_encoder = build_text_encoder(config)
    self.denoiser = build_denoiser(config.model)
    self._denoise = denoisers.text_denoiser(self.denoiser)
    self._denoise_capturing = denoisers.capturing_text_denoiser(self.denoiser)

  @property
  def clip_shape(self) -> tuple:
    """[T, H, W, 3] of one clip the model makes (T = 1 for an image model)."""
    return (self.frames, self.resolution, self.resolution, 3)

  @property
  def pixel_field(self) -> str:
    """The data batch's name for the model's clean pixels."""
    return "video" if self.is_video else "image"

  def tokenize(self, prompts: Sequence[str]):
    return self.tokenizer.encode(list(prompts))

  def encode(self, text_params, tokens) -> dict:
    """Token ids [N, L] -> the conditioning {'emb' [N, L, D], 'mask' [N, L]}; each caption
    view of two-view ids [N, 2 L] (text_lib.CaptionViews) is encoded on its own."""
    emb, mask = encode_tokens(self.text_encoder, text_params, tokens, self.tokenizer.views)
    return {"emb": emb, "mask": mask}

  def encode_prompts(self, params, prompts: Sequence[str]) -> dict:
    return self.encode(params["text"], jnp.asarray(self.tokenize(prompts)))

  def denoise(self, params, x, t, cond, extra=None):
    """The prediction for noisy inputs x in the model's layout (`to_model_layout`) at
    t [B] in [0, 1]; `extra`: the conditioning channels (models/conditioning.py). An SSR
    model also reads cond['noise_level'] [B] in [0, 1], the level `extra` was noised to
    (absent: 0)."""
    return self._denoise(denoiser_params(params), cond_lib.model_input(x, extra), t, cond)

  def denoise_capturing(self, params, x, t, cond, extra=None, groups=None):
    """`denoise`, and the cross-attention maps of the queries whose layout is known
    (layers.Attention's `grid`): (prediction, [[B, T', H', W', L] head-mean weights]),
    of the parameter `groups` named (None: every group)."""
    return self._denoise_capturing(denoiser_params(params), cond_lib.model_input(x, extra),
                                   t, cond, groups)

  def to_model_layout(self, clips):
    """Clips [B, T, H, W, C] -> what the denoiser takes (frames [B, H, W, C] for an image
    model, whose clips have one frame)."""
    return clips if self.is_video else clips[:, 0]


def denoiser_params(params: dict) -> dict:
  """The denoiser's part of the full tree ({'backbone'[, 'temporal']})."""
  return {k: v for k, v in params.items() if k != "text"}
