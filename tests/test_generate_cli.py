"""`lumiere generate` end to end, and its answers to bad input: one line, exit 2, no
traceback, nothing written."""

import json

import numpy as np
import pytest
from PIL import Image

from lumiere_jax import cli


# A freshly initialised model: these tests are about the command, not a trained model.
FRESH = ("--config", "shapes_tiny:t2v")


def run_cli(capsys, *argv):
  if not {"--config", "--checkpoint", "--model"} & set(argv):
    argv = (*FRESH, *argv)
  code = cli.main(["generate", *argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def assert_one_line_error(code, err, match):
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  assert match in lines[0], lines[0]


@pytest.fixture()
def prompts_file(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("a red circle moving left\n\na blue square growing\n")
  return path


BAD_INPUTS = [
    (["--prompt", "a", "--sampler", "euler"], "invalid choice: 'euler'"),
    (["--prompt", "a", "--steps", "0"], "steps must be an integer >= 1"),
    (["--prompt", "a", "--guidance", "-1"], "guidance scale must be >= 0"),
    (["--prompt", "a", "--prompt", " "], "prompt 2 is empty"),
    (["--prompts", "{tmp}/missing.txt"], "prompts file not found"),
    (["--prompts", "{tmp}/empty.txt"], "has no prompts"),
    (["--prompt", "a", "--init-video", "{tmp}/init.npy", "--strength", "1.5"],
     "strength must be in (0, 1]"),
    (["--prompt", "a", "--init-video", "{tmp}/init.npy", "--strength", "0"],
     "strength must be in (0, 1]"),
    (["--prompt", "a", "--strength", "0.5"], "--strength applies to --init-video"),
    (["--prompt", "a", "--prompt", "b"], "use --out-dir for several"),
    (["--prompt", "a", "--num-frames", "6"], "data.num_frames=6 is invalid"),
    (["--prompt", "a", "--checkpoint", "{tmp}"], "holds no complete checkpoint"),
    (["--prompt", "a", "--checkpoint", "{tmp}/missing"], "does not exist"),
    (["--prompt", "a", "--config", "shapes_tiny:ssr"], "model.in_channels=3"),
    (["--prompt", "a", "--sheet", "{tmp}/sheet.gif"], "written as .png or .jpg"),
    (["--prompt", "a", "--model", "no_such_model"], "no shipped model named 'no_such_model'"),
    (["--prompt", "a", "--step", "3"], "--step selects a step of --checkpoint"),
    (["--quiet"], "give --prompt TEXT"),
]


@pytest.mark.parametrize("argv,match", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, match):
  (tmp_path / "empty.txt").write_text("\n  \n")
  np.save(tmp_path / "init.npy", np.zeros((16, 32, 32, 3), np.uint8))
  before = sorted(tmp_path.iterdir())
  argv = [a.format(tmp=tmp_path) for a in argv]
  try:
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "out.mp4"))
  except SystemExit as e:  # argparse errors exit from inside the parser
    code, err = e.code, capsys.readouterr().err
  assert_one_line_error(code, err, match)
  assert sorted(tmp_path.iterdir()) == before


def test_unsupported_output_format_is_refused(tmp_path, capsys):
  code, _, err = run_cli(capsys, "--prompt", "a", "--out", str(tmp_path / "v.avi"))
  assert_one_line_error(code, err, "unsupported video format")
  assert list(tmp_path.iterdir()) == []


def test_generate_out_dir_with_manifest_gif_xt_slice_and_sheet(tmp_path, capsys,
                                                               prompts_file):
  out_dir = tmp_path / "videos"
  code, out, err = run_cli(capsys, "--prompts", str(prompts_file), "--out-dir", str(out_dir),
                           "--also", "gif", "--steps", "2", "--num-frames", "8", "--seed",
                           "5", "--sampler", "ddpm", "--xt-slice",
                           str(tmp_path / "xt.png"), "--sheet", str(tmp_path / "sheet.png"),
                           "--quiet")
  assert code == 0, err
  manifest = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
  assert [(m["prompt"], m["seed"]) for m in manifest] == [
      ("a red circle moving left", 5), ("a blue square growing", 6)]
  for entry in manifest:
    video = np.load(out_dir / entry["path"])
    assert video.shape == (8, 32, 32, 3) and video.dtype == np.uint8
    assert (out_dir / entry["path"]).with_suffix(".gif").is_file()
  assert Image.open(tmp_path / "xt.png").size == ((2 * 32 + 1) * 8, 8 * 8)
  # One row per prompt: caption strip + the 8 frames enlarged to 96 pixels, 4-pixel gaps.
  width, height = Image.open(tmp_path / "sheet.png").size
  assert height == 4 + 2 * (18 + 96 + 4) and width == 4 + 8 * 96 + 7 * 4 + 4
  assert len(out.splitlines()) == 7  # 2 x (.npy, .gif), manifest, slice, sheet
  assert not [p for p in out_dir.iterdir() if ".partial" in p.name]
