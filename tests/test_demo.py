"""`lumiere demo`: per video an mp4, a gif and an X-T slice through the object, and one
contact sheet; a bad --out is one line, exit 2, before any work."""

import numpy as np
import pytest

from lumiere_jax import cli, weights
from lumiere_jax.pipelines import demo, generate


@pytest.fixture()
def demo_model(fresh_model, monkeypatch):
  monkeypatch.setattr(demo, "DEMO_PROMPTS", demo.DEMO_PROMPTS[:2])
  return fresh_model


def test_demo_writes_every_file(tmp_path, capsys, demo_model):
  out = tmp_path / "demo"
  assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
  assert demo_model == [{"name": weights.DEFAULT_MODEL}]
  names = sorted(p.name for p in out.iterdir())
  stems = [generate.output_name(i, p) for i, p in enumerate(demo.DEMO_PROMPTS)]
  assert names == sorted([f"{s}{x}" for s in stems for x in (".gif", ".mp4", ".xt.png")]
                         + ["sheet.png"])
  assert str(out.resolve()) in capsys.readouterr().out


def test_the_xt_slice_goes_through_the_object():
  video = np.zeros((4, 32, 32, 3), np.uint8)
  video[:, 20:24, 5:9] = 200
  assert demo.object_row(video) in range(20, 24)


def test_bad_out_is_one_line_exit_2_before_loading(tmp_path, capsys, fresh_model):
  (tmp_path / "file").write_text("x")
  code = cli.main(["demo", "--out", str(tmp_path / "file")])
  err = capsys.readouterr().err
  assert code == 2 and "not a directory" in err and len(err.strip().splitlines()) == 1
  assert fresh_model == []
