"""benchmarks/peer/compare.py's bookkeeping (its timed runs need the peer's venv and
minutes, so they are benchmarks): medians over repeats, the bfloat16 rows kept apart
from the float32 comparison, and a failed run reported in one line."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peer"


def _load(name):
  spec = importlib.util.spec_from_file_location(name, _DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


compare = _load("compare")


def _times(peer_train, ours_train, peer_samples, ours_sample):
  return {"train_step_s": peer_train, "train_step_frozen_s": peer_train / 2,
          "sample_step_s": peer_samples}, {"train_step_s": ours_train,
                                           "train_step_frozen_s": ours_train / 2,
                                           "sample_step_s": ours_sample}


def test_summarize_takes_medians_and_keeps_bfloat16_apart():
  repeats = []
  for peer, ours, bf_peer, bf_ours in ((0.4, 0.5, 9.0, 0.3), (0.5, 0.4, 8.0, 0.2),
                                       (0.6, 0.3, 7.0, 0.9)):
    p, o = _times(peer, ours, [peer / 4, peer / 5], ours / 4)
    bp, bo = _times(bf_peer, bf_ours, [1.0, 2.0], 0.1)
    repeats.append({"times": {"peer": p, "ours": o, "bf16 peer": bp, "bf16 ours": bo}})
  rows = compare.summarize(repeats)
  train = rows["train full"]
  assert (train["peer_s"], train["ours_s"]) == (0.5, 0.4)
  assert train["ratio_peer_over_ours"] == pytest.approx(1.25)
  assert (train["bf16"]["peer_s"], train["bf16"]["ours_s"]) == (8.0, 0.3)
  # Both of the peer's sampling runs count: the median of six, (0.10 + 0.12) / 2.
  assert rows["sample step"]["peer_s"] == pytest.approx(0.11)
  assert len(rows["sample step"]["peer_runs_s"]) == 6
  # bf16 entries are not read as XLA-option variants of ours.
  assert not [k for k in train if k.startswith("ours ")]


def test_summarize_without_bfloat16_has_no_bf16_rows():
  p, o = _times(0.4, 0.5, [0.1, 0.1], 0.1)
  assert "bf16" not in compare.summarize([{"times": {"peer": p, "ours": o}}])["train full"]


def test_a_failed_run_is_one_line():
  with pytest.raises(compare.RunFailed) as failed:
    compare.checked_run("a probe", [sys.executable, "-c",
                                    "import sys; print('first'); sys.exit('the last words')"])
  assert str(failed.value) == "a probe failed (exit 1): the last words"


def test_peer_autocast_without_a_script_is_a_usage_line():
  done = subprocess.run([sys.executable, str(_DIR / "peer_autocast.py")],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 2 and done.stderr.startswith("usage:")
