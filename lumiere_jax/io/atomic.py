"""Atomic file writes (write beside the target, then rename over it), and the checks
that an output path can be written, made before any work."""

import contextlib
import os
import pathlib
import secrets

from lumiere_jax import runtime
from lumiere_jax.errors import UserError


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
  remove = lambda: tmp.unlink(missing_ok=True)
  try:
    with runtime.cleanup_on_exit(remove):  # also when Ctrl-C ends the process at once
      yield tmp
      os.replace(tmp, path)
  except BaseException:
    remove()
    raise


def write_text(path, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def write_bytes(path, data: bytes) -> None:
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def check_output_file(path, flag: str) -> pathlib.Path:
  """Refuses, before any work, an output file that could not be written: `path` is a
  folder, or the nearest existing folder above it is a file or not writable. Creates
  nothing (missing folders are made when the file is written)."""
  path = pathlib.Path(path)
  if path.is_dir():
    raise UserError(f"{flag} {path} is a folder; give a file path")
  if path.exists() and not path.is_file():
    raise UserError(f"{flag} {path} exists and is not a regular file")
  _check_writable_parent(path.parent, path, flag)
  return path


def check_output_dir(path, flag: str) -> pathlib.Path:
  """Refuses, before any work, an output folder that could not be made or written: it
  is a file, or the nearest existing folder above it is a file or not writable."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir():
    raise UserError(f"{flag} {path} exists and is not a folder")
  _check_writable_parent(path, path, flag)
  return path


def _check_writable_parent(folder: pathlib.Path, path: pathlib.Path, flag: str) -> None:
  existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()),
                  pathlib.Path("."))
  if not existing.is_dir():
    raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f"{flag} {path}: cannot write in {existing}")
