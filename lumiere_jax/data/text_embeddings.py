"""Precomputed text embeddings: a caption -> (embedding [L, D], mask [L]) table.

Large runs with a frozen text encoder encode every caption once, offline, and store the
result in the dataset (fields `text_embedding` and `text_mask`), so training never runs
the encoder. The table is an .npz file with `captions` (str [N]), `embeddings`
(float16/float32 [N, L, D]) and `mask` (bool [N, L]); any encoder can produce one.
"""

import pathlib
import zipfile
from typing import Sequence

import numpy as np

from lumiere_jax.errors import UserError


def save_text_embeddings(path: str | pathlib.Path, captions: Sequence[str],
                         embeddings: np.ndarray, mask: np.ndarray) -> None:
  """Writes a table; embeddings are kept as float16 if given so, else stored as float32."""
  embeddings = np.asarray(embeddings)
  if embeddings.dtype != np.float16:
    embeddings = embeddings.astype(np.float32)
  np.savez(path, captions=np.asarray(captions, dtype=str), embeddings=embeddings,
           mask=np.asarray(mask, dtype=bool))


class TextEmbeddingTable:
  """Looks captions up in a saved table; a caption it lacks is a UserError."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise UserError(f"text embedding file {self.path} does not exist")
    if not zipfile.is_zipfile(self.path):
      raise UserError(f"text embedding file {self.path} is not an .npz archive (np.savez "
                      f"of captions, embeddings and mask)")
    try:
      with np.load(self.path, allow_pickle=False) as data:
        captions, self.embeddings, self.mask = (data[k] for k in
                                                ("captions", "embeddings", "mask"))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise UserError(f"text embedding file {self.path} is not an .npz with captions, "
                      f"embeddings and mask ({type(e).__name__}: {e})") from None
    if self.embeddings.ndim != 3 or self.mask.shape != self.embeddings.shape[:2] \
        or len(captions) != len(self.embeddings):
      raise UserError(f"text embedding file {self.path}: expected captions [N], "
                      f"embeddings [N, L, D] and mask [N, L]")
    if self.embeddings.dtype not in (np.float16, np.float32):
      raise UserError(f"text embedding file {self.path}: embeddings must be float16 or "
                      f"float32, not {self.embeddings.dtype}")
    self.rows = {str(caption): row for row, caption in enumerate(captions)}

  @property
  def shape(self) -> tuple:
    """(L, D) of one caption's embedding."""
    return self.embeddings.shape[1:]

  def __call__(self, caption: str) -> tuple:
    row = self.rows.get(caption)
    if row is None:
      raise UserError(f"text embedding file {self.path} has no entry for the caption "
                      f"{caption!r}")
    return self.embeddings[row], self.mask[row]
