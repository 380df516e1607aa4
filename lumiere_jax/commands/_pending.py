"""Shared body of the subcommands whose capability has not landed yet: their one-line
help says so (in `lumiere --help` and their own --help), and running one is one line and
exit code 2."""

from lumiere_jax.errors import UserError


def pending_help(summary: str, issue: str) -> str:
  return f"{summary} (not available yet: {issue} has not landed)"


def add_pending_arguments(parser, name: str, issue: str) -> None:
  parser.epilog = (f"'lumiere {name}' is not available yet: {issue} has not landed, so "
                   f"it only reports that and exits with code 2.")


def not_available(name: str, issue: str):
  raise UserError(f"'{name}' is not available yet ({issue} has not landed)")
