"""The tokenizer: one id per word of the shapes grammar, <unk> for any other word."""

import logging

import numpy as np
import pytest

from lumiere_jax.data import shapes
from lumiere_jax.models import text
from lumiere_jax.pipelines import generate


def grammar_words() -> set:
  phrases = [*shapes.COLOUR_NAMES, *shapes.SHAPES, *shapes.MOTIONS, "a", "and"]
  return {word for phrase in phrases for word in phrase.split()}


def test_every_word_of_the_shapes_grammar_has_its_own_id():
  tokenizer = text.Tokenizer(text.SHAPES_WORDS, 8)
  words = sorted(grammar_words())
  ids = tokenizer.encode(words)[:, 1]  # BOS, the word, EOS
  assert len(set(ids.tolist())) == len(words)
  assert text.UNK not in ids and min(ids) >= text.NUM_SPECIAL
  assert tokenizer.unknown_words(words) == []


def test_captions_encode_word_by_word_with_bos_eos_and_padding():
  tokenizer = text.Tokenizer(text.SHAPES_WORDS, 12)
  caption = "a blue square moving left and a red circle growing"
  ids = tokenizer.encode([caption])[0]
  expected = [text.BOS, *(text.NUM_SPECIAL + text.SHAPES_WORDS.index(w)
                          for w in caption.split()), text.EOS]
  np.testing.assert_array_equal(ids, expected + [text.PAD] * (12 - len(expected)))
  # Case and punctuation do not change a word; truncation keeps BOS ... EOS.
  np.testing.assert_array_equal(tokenizer.encode(["A Blue, SQUARE!"])[0],
                                tokenizer.encode(["a blue square"])[0])
  short = text.Tokenizer(text.SHAPES_WORDS, 4).encode([caption])[0]
  assert short[0] == text.BOS and short[-1] == text.EOS and text.PAD not in short


def test_unknown_words_map_to_unk_and_are_named_in_order():
  tokenizer = text.Tokenizer(text.SHAPES_WORDS, 10)
  ids = tokenizer.encode(["a purple dog moving left"])[0]
  assert ids[2] == ids[3] == text.UNK
  assert tokenizer.unknown_words(["a purple dog", "purple cats and a dog"]) == [
      "purple", "dog", "cats"]


def test_generation_warns_once_naming_the_unknown_words(caplog):
  tokenizer = text.Tokenizer(text.SHAPES_WORDS, 10)
  with caplog.at_level(logging.WARNING):
    generate.warn_unknown_words(tokenizer, ["a purple circle", "a purple zebra"])
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "purple, zebra" in warnings[0].getMessage()
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    generate.warn_unknown_words(tokenizer, ["a red circle moving left"])
  assert not caplog.records


def test_word_list_files_and_their_errors(tmp_path):
  path = tmp_path / "words.txt"
  path.write_text("cat\ndog\n")
  assert text.vocabulary_words(str(path)) == ("cat", "dog")
  path.write_text("cat\ncat\n")
  with pytest.raises(ValueError, match="distinct"):
    text.vocabulary_words(str(path))
  with pytest.raises(ValueError, match="neither a built-in vocabulary"):
    text.vocabulary_words(str(tmp_path / "missing.txt"))
