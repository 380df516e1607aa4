"""Shared body of the subcommands whose capability has not landed yet."""

from lumiere_jax.errors import UserError


def not_available(name: str, issue: str):
  raise UserError(f"'{name}' is not available yet ({issue} has not landed)")
