"""The one exception type for bad user input.

Anything raised as `UserError` reaches the user as a single line
(`lumiere <command>: error: <message>`) and exit code 2, never as a traceback.
"""


class UserError(Exception):
  """Bad input from the user: a config, a flag, a file, a shape."""


class ConfigError(UserError, ValueError):
  """A config field has a value the model or pipeline cannot use."""
