"""Atomic file writes: write beside the target, then rename over it."""

import contextlib
import os
import pathlib
import secrets


@contextlib.contextmanager
def atomic_path(path):
  """Yields a not-yet-existing temporary path in the target's directory (a rename is only
  atomic within one filesystem) with the target's suffix (tools that pick a format by
  extension still work). Whoever writes it creates it, so it gets the usual permissions.
  On success it replaces `path` in one rename; on any exception it is removed and `path`
  is left untouched."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.stem}.{secrets.token_hex(6)}.partial{path.suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def write_bytes(path, data: bytes) -> None:
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
