"""The `lumiere` dispatch: help on every subcommand, one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from lumiere_jax import cli


def test_every_subcommand_has_help(capsys):
  for name in cli.SUBCOMMANDS:
    with pytest.raises(SystemExit) as exit_info:
      cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"lumiere {name}" in capsys.readouterr().out


def test_unknown_subcommand_is_one_line_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["frobnicate"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "invalid choice: 'frobnicate'" in err


def test_console_script_reports_bad_arguments_without_traceback():
  result = subprocess.run([sys.executable, "-m", "lumiere_jax.cli", "generate", "--prompt", "a red circle", "--out", "x.gif", "--bogus"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert "unrecognized arguments: --bogus" in result.stderr
