"""A small trainable text encoder behind the (embeddings [B, L, D], mask [B, L]) interface.

The tokenizer is word-level with a hashed vocabulary: offline, deterministic and free of
any downloaded vocabulary file. Every prompt starts with BOS, so even the empty prompt (the
unconditional input for classifier-free guidance) has one valid token and cross-attention
never sees an all-masked row. Precomputed or external encoders plug in by producing the
same (embeddings, mask) pair.
"""

import re
import zlib
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from lumiere_jax.models import layers

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3
_WORD = re.compile(r"[a-z0-9]+")


class Tokenizer:
  """Lower-cased words -> ids in [3, vocab_size) by CRC32 hashing; BOS ... EOS, PAD."""

  def __init__(self, vocab_size: int, max_length: int):
    self.vocab_size = vocab_size
    self.max_length = max_length

  def word_id(self, word: str) -> int:
    return NUM_SPECIAL + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - NUM_SPECIAL)

  def encode(self, prompts: Sequence[str]) -> np.ndarray:
    """int32 [N, max_length]; words beyond max_length - 2 are dropped."""
    tokens = np.full((len(prompts), self.max_length), PAD, np.int32)
    for row, prompt in enumerate(prompts):
      ids = [self.word_id(w) for w in _WORD.findall(prompt.lower())][: self.max_length - 2]
      ids = [BOS, *ids, EOS]
      tokens[row, : len(ids)] = ids
    return tokens


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
                                                  ("length", "embed")),
                     (self.max_length, self.width))
    x = jnp.take(embed, tokens, axis=0) + pos[None, : tokens.shape[1]]
    x = x.astype(self.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    bias = layers.mask_to_bias(mask[:, None, None, :])
    for i in range(self.num_layers):
      h = layers.LayerNorm(name=f"layers_{i}_norm1")(x)
      x = x + layers.Attention(heads=self.num_heads, dim_head=self.width // self.num_heads,
                               dtype=self.dtype, name=f"layers_{i}_attn")(h, bias=bias)
      h = layers.LayerNorm(name=f"layers_{i}_norm2")(x)
      h = layers.Dense(self.width * self.mlp_ratio, ("embed", "mlp"), dtype=self.dtype,
                       name=f"layers_{i}_fc1")(h)
      x = x + layers.Dense(self.width, ("mlp", "embed"), dtype=self.dtype,
                           name=f"layers_{i}_fc2")(nn.gelu(h))
    x = layers.LayerNorm(name="final_norm")(x)
    return x.astype(jnp.float32), mask


def text_encoder_from_config(text_config, dtype=jnp.float32) -> TextEncoder:
  return TextEncoder(vocab_size=text_config.vocab_size, max_length=text_config.max_length,
                     width=text_config.width, num_layers=text_config.num_layers,
                     num_heads=text_config.num_heads, mlp_ratio=text_config.mlp_ratio,
                     dtype=dtype)
