"""Cross-attention grounding: each object's pixels may not read the other object's words.

An option of the t2v stage (train.grounding_weight > 0; not in the paper). On the shapes
data, a two-object caption ("a red circle moving left and a blue square moving up") is two
parts cut at the split word "and", and each part names its object's colour. A model that
reads which motions a caption holds but not whose they are (benchmarks/binding_probe.py
measured exactly that: swapping two objects' motions costs the shipped model nothing)
needs the pixels of the red object to attend to the red part only. The loss is, for each
role a word can have (its colour, its shape, its motion: train.grounding_roles), of what
each object's positions read of the two parts' words of that role, the share that goes to
the other's, averaged over the roles:

  leak = mean_role sum_k sum_p e_k(p) * (r_{1-k}(p) + eps) / (r_k(p) + r_{1-k}(p) + 2 eps)
         / sum_k sum_p e_k(p),   r_j(p) = sum_{i in part j, of the role} A(p, i),

over every captured cross-attention map A [B, T', H', W', L] (head-mean softmax weights,
layers.Attention), where e_k is object k's exclusive occupancy (its colour's pixels,
average-pooled to the map's grid, times one minus the other object's). Object masks come
from the clean clip by colour (each part's colour word -> the renderer's colour), so no
dataset field is needed. One-object and prompt-dropped captions have one part and add
nothing. A share, not the other part's mass alone: that one is least where a position
reads no word of either part (stop 50 measured a FiLM pool trained so reading no motion
at all). A share per role, not over all of a part's words: a position that reads its own
colour word alone has a share of 0 over all words, and FiLM pools trained so (stop 51)
read the colour they can see and lost the motion; per role, every role it does not read
scores 1/2. A TokenCompose-like (Wang et al. 2024) token-level grounding of cross-attention,
written for the shapes grammar.

With model.temporal.caption_parts = 2 the ids are three views side by side ([B, 3 L]: the
caption, then each part on its own; text.CaptionViews) and the temporal layers' maps read
the caption followed by one token per part ([..., L + 2]). On those maps the leak is the
other part token's share of what each object's positions read of the two part tokens: a
part token holds one object's colour and motion, so reading one's own binds them in one
hop (stop 51 measured the denoising loss alone leaving both read at 1/15). Maps over the
caption alone (the backbone's) keep the per-role share of the caption's words. With
model.temporal.caption_drop_words as well, the temporal layers' caption (and so each part)
lacks the dropped words ([B, 4 L]: the caption, the caption without them, then each part
of that one); nothing changes above as long as each part keeps its colour word.
"""

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from lumiere_jax.data import shapes
from lumiere_jax.errors import ConfigError
from lumiere_jax.models import text as text_lib

SPLIT_WORD = "and"
# A pixel belongs to a colour when every channel is within this of it (uint8 units): the
# renderer's colours are at least 110 apart in some channel; edge pixels blended with the
# black background fall out.
COLOUR_TOLERANCE = 48.0
EPSILON = 1e-3  # attention mass below which a position reads neither part
# The parameter groups that hold cross-attention maps (train.grounding_groups).
MAP_GROUPS = ("backbone", "temporal", "local_film", "film_pool")
# The roles of a part's words (train.grounding_roles), and the shapes words of each.
ROLES = ("colour", "shape", "motion")
ROLE_WORDS = (shapes.COLOUR_NAMES, shapes.SHAPES,
              tuple(dict.fromkeys(w for m in shapes.MOTIONS for w in m.split())))


class Vocabulary(NamedTuple):
  """Per token id: the split word's id, the colour a colour word names (float32 [V, 3],
  the model's range [-1, 1]; 0 elsewhere), whether it names one (bool [V]), and its role
  (int32 [V]: an index into ROLES, -1 for "a", "and" and the special tokens); the number
  of part views at the end of the ids (0, or 2 with caption_parts = 2) and of views
  between the caption and them (1 with caption_drop_words, which needs the parts)."""

  split_id: int
  colour: np.ndarray
  has_colour: np.ndarray
  role: np.ndarray
  parts: int = 0
  dropped: int = 0


def vocabulary_tables(tokenizer) -> Vocabulary:
  """The tables of a word tokenizer whose vocabulary holds "and" and every word of the
  shapes captions, with one view or the caption and its two parts split at "and"
  (caption_parts = 2; a view without caption_drop_words between them allowed);
  ConfigError otherwise."""
  parts = getattr(tokenizer, "parts", 0)
  dropped = int(bool(getattr(tokenizer, "dropped", ())))
  if not hasattr(tokenizer, "words") or (dropped and not parts) or (
      getattr(tokenizer, "views", 1) != 1 + dropped + parts) or parts not in (0, 2) or (
      parts and tokenizer.split_word != SPLIT_WORD):
    raise ConfigError("train.grounding_weight > 0 needs a caption tokenizer with one view "
                      "or with model.temporal.caption_parts = 2 split at 'and' "
                      "(caption_drop_words only with those parts)")
  vocab = {w: i + text_lib.NUM_SPECIAL for i, w in enumerate(tokenizer.words)}
  missing = [w for w in (SPLIT_WORD, *sum(ROLE_WORDS, ())) if w not in vocab]
  if missing:
    raise ConfigError(f"train.grounding_weight > 0 needs the shapes captions' words; the "
                      f"vocabulary lacks {', '.join(missing)}")
  table = np.zeros((tokenizer.vocab_size, 3), np.float32)
  has_colour = np.zeros((tokenizer.vocab_size,), bool)
  for name, rgb in shapes.COLOURS.items():
    table[vocab[name]] = np.asarray(rgb, np.float32) / 127.5 - 1.0
    has_colour[vocab[name]] = True
  role = np.full((tokenizer.vocab_size,), -1, np.int32)
  for index, words in enumerate(ROLE_WORDS):
    role[[vocab[w] for w in words]] = index
  return Vocabulary(vocab[SPLIT_WORD], table, has_colour, role, parts, dropped)


def token_parts(tokens, split_id: int):
  """Token ids [B, L] -> (part of each token [B, L]: 0 before the split word, 1 after,
  -1 for the split word and special tokens; two parts [B] bool: exactly one split)."""
  is_split = tokens == split_id
  part = jnp.cumsum(is_split, axis=-1)
  word = (tokens >= text_lib.NUM_SPECIAL) & ~is_split
  two = is_split.sum(-1) == 1
  return jnp.where(word & (part <= 1), part, -1), two


def part_colours(tokens, parts, table, has_colour):
  """[B, 2, 3]: each part's colour (the model's range; the first colour word of the part)
  and [B, 2] bool: the part names one."""
  colours, named = [], []
  for k in (0, 1):
    hit = (parts == k) & jnp.asarray(has_colour)[tokens]
    first = jnp.argmax(hit, axis=-1)
    colours.append(jnp.asarray(table)[jnp.take_along_axis(tokens, first[:, None], -1)[:, 0]])
    named.append(hit.any(-1))
  return jnp.stack(colours, 1), jnp.stack(named, 1)


def object_masks(x0, colours):
  """Clean clips [B, T, H, W, 3] in [-1, 1], colours [B, K, 3] -> [B, K, T, H, W] float:
  1 where every channel is within COLOUR_TOLERANCE of the colour."""
  diff = jnp.abs(x0[:, None] - colours[:, :, None, None, None, :]).max(-1)
  return (diff <= COLOUR_TOLERANCE / 127.5).astype(jnp.float32)


def pool_to(masks, grid):
  """[B, K, T, H, W] -> [B, K, T', H', W'] by averaging (each size divides)."""
  b, k, t, h, w = masks.shape
  tt, hh, ww = grid
  return masks.reshape(b, k, tt, t // tt, hh, h // hh, ww, w // ww).mean(axis=(3, 5, 7))


def caption_and_parts(tokens, tables: Vocabulary):
  """(the caption's ids [B, L], each token's part [B, L] (token_parts), the part views'
  ids side by side [B, 2 L] with the part of each of their words [B, 2 L], two parts [B])
  of one-view ids [B, L] (parts cut at the split word) or of caption-parts ids [B, 3 L]
  (each part its own view; [B, 4 L] with the view without caption_drop_words, unread)."""
  if not tables.parts:
    parts, two = token_parts(tokens, tables.split_id)
    return tokens, parts, tokens, parts, two
  caption, *views = jnp.split(tokens, 1 + tables.dropped + tables.parts, axis=1)
  views = views[tables.dropped:]
  parts, _ = token_parts(caption, tables.split_id)
  view_parts = [jnp.where(v >= text_lib.NUM_SPECIAL, k, -1) for k, v in enumerate(views)]
  two = jnp.stack([(p >= 0).any(-1) for p in view_parts], -1).all(-1)
  return (caption, parts, jnp.concatenate(views, 1), jnp.concatenate(view_parts, 1), two)


def other_share(read):
  """[..., 2, T', H', W'] what each position reads of each part -> of the two, the other
  part's share; reading neither scores 1/2, as reading both alike does."""
  other = jnp.flip(read, -4)
  return (other + EPSILON) / (read + other + 2 * EPSILON)


def leak(maps, tokens, x0, tables: Vocabulary, roles=ROLES):
  """The grounding loss's per-example leak [B] (of what each object's positions read of
  the two parts' words of a role, the other part's share, mean over `roles`; on a map
  that reads part tokens, of the two part tokens; mean over maps) and the weight [B] of
  each example: 1 for a two-part caption whose parts both name a colour and whose objects
  are in the clip."""
  caption, parts, part_ids, view_parts, two = caption_and_parts(tokens, tables)
  length = caption.shape[-1]
  colours, named = part_colours(part_ids, view_parts, tables.colour, tables.has_colour)
  masks = object_masks(x0, colours)
  valid = two & named.all(-1) & (masks.sum(axis=(2, 3, 4)) > 0).all(-1)
  role = jnp.asarray(tables.role)[caption]
  # [R, 2, B, L]: the caption's words of each role in each part.
  words = jnp.stack([jnp.stack([(parts == k) & (role == ROLES.index(r)) for k in (0, 1)])
                     for r in roles])
  per_map = []
  for a in maps:
    occupancy = pool_to(masks, a.shape[1:4])                       # [B, 2, T', H', W']
    exclusive = occupancy * (1.0 - occupancy[:, ::-1])
    total = jnp.maximum(exclusive.sum(axis=(1, 2, 3, 4)), 1e-6)
    if tables.parts and a.shape[-1] == length + tables.parts:
      # What each position reads of each part token: [B, 2, T', H', W'].
      share = other_share(jnp.moveaxis(a[..., length:], -1, 1))
      per_map.append((exclusive * share).sum(axis=(1, 2, 3, 4)) / total)
      continue
    # What each position reads of part k's words of each role: [R, B, 2, T', H', W'].
    read = jnp.einsum("bthwl,rkbl->rbkthw", a[..., :length], words.astype(a.dtype))
    per_role = (exclusive * other_share(read)).sum(axis=(2, 3, 4, 5)) / total
    per_map.append(per_role.mean(0))
  return jnp.mean(jnp.stack(per_map), 0), valid.astype(jnp.float32)


def grounding_loss(maps, tokens, x0, t, tables: Vocabulary, t_max: float, roles=ROLES):
  """(loss, metrics): the mean leak over the batch's two-object examples at t <= t_max
  (0 when there are none)."""
  per_example, weight = leak(maps, tokens, x0, tables, roles)
  weight = weight * (t <= t_max)
  loss = (per_example * weight).sum() / jnp.maximum(weight.sum(), 1.0)
  return loss, {"grounding_leak": loss, "grounding_examples": weight.sum()}
