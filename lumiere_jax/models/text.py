"""A small trainable text encoder behind the (embeddings [B, L, D], mask [B, L]) interface.

The tokenizer is word-level over a fixed vocabulary (HuggingFace `tokenizers`, built in
memory: offline, deterministic, nothing downloaded). Every word of the vocabulary has its
own id; any other word maps to UNK, and `unknown_words` names them so callers can warn.
Every prompt starts with BOS, so even the empty prompt (the unconditional input for
classifier-free guidance) has one valid token and cross-attention never sees an all-masked
row. Precomputed or external encoders (T5, CLIP) plug in by producing the same
(embeddings, mask) pair.
"""

import os
import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import tokenizers
from tokenizers import models as tok_models
from tokenizers import normalizers, pre_tokenizers, processors

from lumiere_jax.models import layers
from lumiere_jax.parallel import sharding

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
NUM_SPECIAL = len(SPECIAL_TOKENS)
_NON_WORD = r"[^a-z0-9]+"

# The words of the shapes captions ("a {colour} {shape} {motion} and a ..."), in a fixed
# order: a word's id is its position here plus NUM_SPECIAL, and shipped weights depend on
# it, so append, never reorder.
SHAPES_WORDS = (
    "a", "and",
    "red", "green", "blue", "yellow", "magenta", "cyan", "white",
    "circle", "square", "triangle",
    "moving", "left", "right", "up", "down", "bouncing", "around", "growing", "shrinking",
    "standing", "still",
)
VOCABULARIES = {"shapes": SHAPES_WORDS}


def words(prompt: str) -> list:
  """The words of a prompt as the tokenizer splits them (lower-cased runs of [a-z0-9]);
  a prompt without any encodes exactly as the empty prompt."""
  return [w for w in re.split(_NON_WORD, prompt.lower()) if w]


def vocabulary_words(name_or_path: str) -> tuple:
  """A built-in vocabulary by name, or a word list file (one word per line)."""
  if name_or_path in VOCABULARIES:
    return VOCABULARIES[name_or_path]
  if not os.path.isfile(name_or_path):
    raise ValueError(f"text.vocabulary {name_or_path!r} is neither a built-in vocabulary "
                     f"({', '.join(VOCABULARIES)}) nor a word list file")
  with open(name_or_path, encoding="utf-8") as f:
    words = tuple(w.strip().lower() for w in f if w.strip())
  bad = [w for w in words if re.fullmatch(r"[a-z0-9]+", w) is None]
  if bad or len(set(words)) != len(words):
    raise ValueError(f"word list {name_or_path}: words must be distinct and [a-z0-9]+ "
                     f"(offending: {bad[:3] or 'duplicates'})")
  return words


class Tokenizer:
  """Lower-cased words -> ids: BOS word... EOS, then PAD to max_length; UNK for others."""

  views = 1  # one view of each caption (see CaptionViews)

  def __init__(self, words: Sequence[str], max_length: int):
    self.words = tuple(words)
    self.max_length = max_length
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *self.words))}
    if len(vocab) != NUM_SPECIAL + len(self.words):
      raise ValueError("the vocabulary repeats a word")
    tok = tokenizers.Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(_NON_WORD), behavior="removed")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)])
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=PAD, pad_token="<pad>")
    self._tokenizer = tok

  @property
  def max_words(self) -> int:
    """Words a prompt may have before encode() drops the rest (BOS and EOS take two)."""
    return self.max_length - 2

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + len(self.words)

  def encode(self, prompts: Sequence[str]) -> np.ndarray:
    """int32 [N, max_length]; words beyond max_length - 2 are dropped."""
    if not prompts:
      return np.zeros((0, self.max_length), np.int32)
    encodings = self._tokenizer.encode_batch(list(prompts))
    return np.asarray([e.ids for e in encodings], np.int32)

  def unknown_words(self, prompts: Sequence[str]) -> list:
    """The distinct words of `prompts` outside the vocabulary, in order of appearance."""
    known, unknown = set(self.words), []
    for prompt in prompts:
      for word in words(prompt):
        if word not in known and word not in unknown:
          unknown.append(word)
    return unknown


def drop_words(prompt: str, dropped) -> str:
  """The prompt's words (as the tokenizer splits them) without those in `dropped`."""
  return " ".join(w for w in words(prompt) if w not in dropped)


def split_words(prompt: str, split_word: str, parts: int) -> list:
  """The prompt's words cut at `split_word` into `parts` lists (the first parts - 1 cuts;
  the rest stays in the last part; missing parts are empty)."""
  out = [[]]
  for word in words(prompt):
    if word == split_word and len(out) < parts:
      out.append([])
    else:
      out[-1].append(word)
  return out + [[] for _ in range(parts - len(out))]


class CaptionViews:
  """A Tokenizer whose ids hold several views of each caption side by side, [N, V L]: the
  caption (what a STUNet's backbone reads); with `dropped` words, the caption without them
  (model.temporal.caption_drop_words); with `parts`, the temporal layers' caption cut at
  `split_word` into that many parts, each a caption of its own (a part without words is
  all PAD: nothing to read), which the STUNet pools into one token per part
  (model.temporal.caption_parts). Everything else is the Tokenizer's."""

  def __init__(self, base: Tokenizer, dropped: Sequence[str] = (), split_word: str = "",
               parts: int = 0):
    self.base = base
    self.dropped = frozenset(dropped)
    self.split_word, self.parts = split_word, parts
    self.words, self.max_length = base.words, base.max_length
    self.views = 1 + bool(self.dropped) + parts

  max_words = property(lambda self: self.base.max_words)
  vocab_size = property(lambda self: self.base.vocab_size)

  def unknown_words(self, prompts: Sequence[str]) -> list:
    return self.base.unknown_words(prompts)

  def _parts(self, prompts: list) -> list:
    cut = [split_words(p, self.split_word, self.parts) for p in prompts]
    out = []
    for k in range(self.parts):
      ids = self.base.encode([" ".join(c[k]) for c in cut])
      keep = np.asarray([k == 0 or bool(c[k]) for c in cut])  # the first part always reads
      out.append(np.where(keep[:, None], ids, PAD).astype(np.int32))
    return out

  def encode(self, prompts: Sequence[str]) -> np.ndarray:
    """int32 [N, V max_length]: the caption's ids, then those of each further view."""
    prompts = list(prompts)
    views = [self.base.encode(prompts)]
    temporal = [drop_words(p, self.dropped) for p in prompts] if self.dropped else prompts
    if self.dropped:
      views.append(self.base.encode(temporal))
    views += self._parts(temporal)
    return np.concatenate(views, axis=1)


def split_views(x, views: int) -> list:
  """[N, views * L, ...] -> `views` arrays [N, L, ...] (the inverse of CaptionViews)."""
  return [x] if views == 1 else list(jnp.split(x, views, axis=1))


def tokenizer_from_config(text_config, dropped: Sequence[str] = (), split_word: str = "",
                          parts: int = 0):
  """The caption tokenizer; with `dropped` words or caption `parts`, CaptionViews."""
  base = Tokenizer(vocabulary_words(text_config.vocabulary), text_config.max_length)
  return CaptionViews(base, dropped, split_word, parts) if dropped or parts else base


def _pre_ln_layer(x, bias, name: str, heads: int, mlp_ratio: int, dtype,
                  out_init=nn.initializers.lecun_normal()):
  """One pre-LN transformer layer (self-attention, GELU MLP), its parameters named
  NAME_norm1, NAME_attn, NAME_norm2, NAME_fc1, NAME_fc2 in the calling module; `out_init`
  initialises both residual branches' output projections."""
  width = x.shape[-1]
  h = layers.LayerNorm(name=f"{name}_norm1")(x)
  x = x + layers.Attention(heads=heads, dim_head=width // heads, dtype=dtype,
                           out_init=out_init, name=f"{name}_attn")(h, bias=bias)
  h = layers.LayerNorm(name=f"{name}_norm2")(x)
  h = layers.Dense(width * mlp_ratio, ("embed", "mlp"), dtype=dtype, name=f"{name}_fc1")(h)
  return x + layers.Dense(width, ("mlp", "embed"), dtype=dtype, kernel_init=out_init,
                          name=f"{name}_fc2")(nn.gelu(h))


class TextEncoder(nn.Module):
  """Token + position embeddings, pre-LN transformer layers, final LayerNorm."""

  vocab_size: int
  max_length: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    mask = tokens != PAD
    embed = self.param("token_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                    ("vocab", "embed")),
                       (self.vocab_size, self.width))
    pos = self.param("position_embedding",
                     nn.with_logical_partitioning(nn.initializers.normal(0.01),
                                                  ("position", "embed")),
                     (self.max_length, self.width))
    x = jnp.take(embed, tokens, axis=0) + pos[None, : tokens.shape[1]]
    x = x.astype(self.dtype)
    x = sharding.constrain(x, ("batch", "length", "embed"))
    bias = layers.mask_to_bias(mask[:, None, None, :])
    for i in range(self.num_layers):
      x = _pre_ln_layer(x, bias, f"layers_{i}", self.num_heads, self.mlp_ratio, self.dtype)
    x = layers.LayerNorm(name="final_norm")(x)
    return x.astype(jnp.float32), mask


class CaptionAdapter(nn.Module):
  """Trainable pre-LN transformer layers over the (frozen) encoder's output, each residual
  branch ending in a zero-initialised projection, so that at init it passes the caption
  through unchanged and can be added to a trained model. The frozen random encoder
  hardly mixes its tokens, so "left" in "a red circle moving left and a blue square moving
  up" does not say whose motion it is; layers trained with the video model can write the
  object into its motion word (binding). [B, L, D], mask [B, L] -> [B, L, D]."""

  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, context, mask):
    bias = layers.mask_to_bias(mask[:, None, None, :])
    x = context
    for i in range(self.num_layers):
      x = _pre_ln_layer(x, bias, f"layers_{i}", self.num_heads, self.mlp_ratio, self.dtype,
                        out_init=nn.initializers.zeros)
    return x


def text_encoder_from_config(text_config, dtype=jnp.float32) -> TextEncoder:
  return TextEncoder(vocab_size=text_config.vocab_size, max_length=text_config.max_length,
                     width=text_config.width, num_layers=text_config.num_layers,
                     num_heads=text_config.num_heads, mlp_ratio=text_config.mlp_ratio,
                     dtype=dtype)
