""".ci/run with stand-ins for pip, python and pytest (nothing is installed or run): it
refuses LUMIERE_UPDATE_GOLDEN, and it fails unless the conformance tests ran."""

import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PASSED = ('<testsuites><testsuite><testcase classname="tests.test_conformance" '
          'name="test_conformance_tiny_from_safetensors" />'
          '<testcase classname="tests.test_models" name="test_x" /></testsuite></testsuites>')
SKIPPED = ('<testsuites><testsuite><testcase classname="" name="tests.test_conformance">'
           '<skipped message="collection skipped">could not import \'torch\'</skipped>'
           '</testcase></testsuite></testsuites>')
ABSENT = ('<testsuites><testsuite><testcase classname="tests.test_models" name="test_x" />'
          '</testsuite></testsuites>')


def _script(path: pathlib.Path, body: str) -> None:
  path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture()
def run_ci(tmp_path):
  """Runs .ci/run with pip, python3's pip and import check, and the README's `pip` and
  `python -m pytest` replaced: pytest writes the given JUnit report and exits with the
  given code. Returns (completed process, the commands the stand-ins saw)."""
  bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
  bin_dir.mkdir()
  _script(bin_dir / "python3", f"""
      echo "python3 $*" >> {log}
      if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then exit 0; fi
      if [ "$1" = "-c" ]; then exit "${{FAKE_IMPORT_STATUS:-0}}"; fi
      exec {sys.executable} "$@"
      """)
  _script(bin_dir / "pip", f'echo "pip $*" >> {log}\n')
  _script(bin_dir / "python", f"""
      echo "python $*" >> {log}
      for option in $PYTEST_ADDOPTS; do
        case "$option" in --junitxml=*) cp "$FAKE_REPORT" "${{option#--junitxml=}}";; esac
      done
      exit "${{FAKE_PYTEST_STATUS:-0}}"
      """)

  def run(report=PASSED, pytest_status=0, import_status=0, **env):
    (tmp_path / "report.xml").write_text(report)
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("LUMIERE_UPDATE_GOLDEN", "PYTEST_ADDOPTS")}
    environment.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                       FAKE_REPORT=str(tmp_path / "report.xml"),
                       FAKE_PYTEST_STATUS=str(pytest_status),
                       FAKE_IMPORT_STATUS=str(import_status), **env)
    result = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=environment,
                            capture_output=True, text=True, timeout=60)
    return result, log.read_text() if log.exists() else ""

  return run


def test_ci_passes_when_the_conformance_tests_ran(run_ci):
  result, calls = run_ci()
  assert result.returncode == 0, result.stderr
  assert "python -m pytest -n 2 -q" in calls  # the README's command, as written there
  assert "the conformance tests ran" in result.stdout


@pytest.mark.parametrize("report,message", [
    (SKIPPED, "1 of 1 conformance tests were skipped: could not import 'torch'"),
    (ABSENT, "no conformance test ran"),
], ids=["skipped", "absent"])
def test_ci_fails_when_the_conformance_tests_did_not_run(run_ci, report, message):
  result, _ = run_ci(report=report)
  assert result.returncode == 1
  assert message in result.stderr


def test_ci_fails_when_torch_or_diffusers_does_not_import(run_ci):
  result, calls = run_ci(import_status=1)
  assert result.returncode == 1
  assert "torch or diffusers does not import" in result.stderr
  assert "pytest" not in calls


def test_ci_exits_with_the_test_command_status_when_it_fails(run_ci):
  result, _ = run_ci(pytest_status=3)
  assert result.returncode == 3


def test_ci_refuses_to_update_the_golden_files(run_ci):
  result, calls = run_ci(LUMIERE_UPDATE_GOLDEN="1")
  assert result.returncode == 1
  assert "LUMIERE_UPDATE_GOLDEN is set" in result.stderr
  assert calls == ""  # refused before installing or running anything
