"""Exit 1 unless the JUnit XML report of a pytest run shows the conformance tests
(tests/test_conformance.py: our backbone against diffusers/torch) ran, none skipped.

  python3 .ci/check_conformance.py REPORT.xml
"""

import sys
import xml.etree.ElementTree as ElementTree

MODULE = "tests.test_conformance"


def problem(report_path: str):
  """What is wrong with the report's conformance tests, or None."""
  try:
    # A test is reported with classname MODULE; a module skipped at collection (a failed
    # pytest.importorskip) as one case named MODULE.
    cases = [case for case in ElementTree.parse(report_path).iter("testcase")
             if case.get("classname", "").startswith(MODULE) or case.get("name") == MODULE]
  except (OSError, ElementTree.ParseError) as e:
    return f"no readable test report at {report_path} ({e})"
  if not cases:
    return f"no conformance test ran ({MODULE} is missing from the report)"
  skipped = [case for case in cases if case.find("skipped") is not None]
  if skipped:
    element = skipped[0].find("skipped")
    reason = (element.text or element.get("message", "")).strip()
    return f"{len(skipped)} of {len(cases)} conformance tests were skipped: {reason}"
  return None


def main(argv) -> int:
  found = problem(argv[1])
  if found:
    print(f"ci: {found}", file=sys.stderr)
    return 1
  print("ci: the conformance tests ran")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
