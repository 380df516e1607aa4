"""Errors that reach the user as one line, and Ctrl-C.

Anything raised as `UserError` reaches the user as a single line
(`lumiere <command>: error: <message>`) and exit code 2, never as a traceback.
`one_line` is the one place that also turns the other known failures of bad input or a
bad environment (a file that is not what it should be, a full disk, a number too large,
device memory) into such a line; anything else is a bug and keeps its traceback. With
`lumiere --debug ...` or LUMIERE_DEBUG=1 the traceback is printed above the line.
"""

import zipfile
from typing import Optional

DEBUG_ENV = "LUMIERE_DEBUG"
DEBUG_HINT = "run with --debug for the traceback"


class UserError(Exception):
  """Bad input from the user: a config, a flag, a file, a shape."""


class ConfigError(UserError, ValueError):
  """A config field has a value the model or pipeline cannot use."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, honoured at a safe point; the message says what was kept."""


def flatten(message: str) -> str:
  """A message as one line (newlines and runs of spaces become single spaces)."""
  return " ".join(str(message).split())


def one_line(error: BaseException) -> Optional[str]:
  """The one-line description of a known failure, or None for anything else (a bug)."""
  if isinstance(error, UserError):
    return flatten(error)
  detail = _describe(error)
  return None if detail is None else flatten(f"{detail} ({DEBUG_HINT})")


def _describe(error: BaseException) -> Optional[str]:
  if isinstance(error, OSError) and error.strerror:
    where = " -> ".join(repr(str(f)) for f in (error.filename, error.filename2)
                        if f is not None)
    return f"{error.strerror}: {where}" if where else error.strerror
  if isinstance(error, UnicodeError):
    return f"a file or argument is not UTF-8 text: {error}"
  if isinstance(error, zipfile.BadZipFile):
    return f"not a valid zip or .npz file: {error}"
  if isinstance(error, OverflowError):
    return f"a number is too large: {error}"
  if isinstance(error, MemoryError):
    return "out of host memory"
  text = str(error)
  if type(error).__name__ in ("XlaRuntimeError", "JaxRuntimeError") and \
      "RESOURCE_EXHAUSTED" in text:
    return f"out of device memory: {text.splitlines()[0] if text else ''}"
  return None
