"""The TFDS builders: layout, determinism, reading without TensorFlow, held-out split, text
embeddings, safe interruption, and the folder builder on real mp4/gif/webm/PNG files."""

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import imageio_ffmpeg
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lumiere_jax import cli
from lumiere_jax.data import builders, shapes
from lumiere_jax.data.text_embeddings import save_text_embeddings
from lumiere_jax.errors import UserError

R, T, N = 32, 8, 12
HELD_OUT = "red circle growing"


def _build(out, **kwargs):
  options = dict(num_videos=N, resolution=R, num_frames=T, seed=5, held_out=[HELD_OUT],
                 num_held_out_videos=4) | kwargs
  return builders.build_shapes(out, **options)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
  return _build(tmp_path_factory.mktemp("shapes"))


def _files(version_dir: pathlib.Path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(version_dir.iterdir())}


# ---------------------------------------------------------------------------------------
# shapes


def test_layout_is_a_tfds_data_dir_with_array_record_files(shapes_dir):
  assert shapes_dir.parts[-2:] == ("shapes", "1.0.0")
  names = sorted(p.name for p in shapes_dir.iterdir())
  assert "dataset_info.json" in names and "features.json" in names
  assert any(n.startswith("shapes-train.array_record-") for n in names)
  assert any(n.startswith("shapes-heldout.array_record-") for n in names)
  assert [p.name for p in shapes_dir.parent.parent.iterdir()] == ["shapes"]  # no leftovers


def test_read_back_without_tensorflow(shapes_dir):
  script = textwrap.dedent(f"""
      import sys
      import tensorflow_datasets as tfds
      builder = tfds.builder_from_directory({str(shapes_dir)!r})
      source = builder.as_data_source(split="train")
      example = source[3]
      assert len(source) == {N} and example["id"] == 3, example["id"]
      assert example["video"].shape == ({T}, {R}, {R}, 3)
      assert "tensorflow" not in sys.modules
      print(example["caption"].decode())
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("a ")


def test_records_are_the_rendered_clips_in_order(shapes_dir):
  source = tfds.builder_from_directory(shapes_dir).as_data_source(split="train")
  excluded = frozenset({builders.parse_combination(HELD_OUT)})
  for index in (0, 7):
    clip = shapes.render_clip((5, 0, index), R, T, 0.5, excluded)
    example = source[index]
    assert example["id"] == index
    np.testing.assert_array_equal(example["video"], clip.video)
    assert example["caption"].decode() == clip.caption
    assert example["num_objects"] == len(clip.tracks)
    np.testing.assert_allclose(example["object_centres"][0], clip.tracks[0].centres, atol=1e-4)


def test_same_seed_same_bytes_other_seed_other_bytes(shapes_dir, tmp_path):
  assert _files(_build(tmp_path / "again")) == _files(shapes_dir)
  other = _files(_build(tmp_path / "other", seed=6))
  train = [n for n in other if n.startswith("shapes-train")]
  assert all(other[n] != _files(shapes_dir)[n] for n in train)


def test_held_out_combinations_are_only_in_the_heldout_split(shapes_dir):
  builder = tfds.builder_from_directory(shapes_dir)
  held = builders.parse_combination(HELD_OUT)
  code = (shapes.COLOUR_NAMES.index(held[0]), shapes.SHAPES.index(held[1]),
          shapes.MOTIONS.index(held[2]))

  def combinations(split):
    return [{tuple(row) for row in e["object_attributes"]} for e in
            builder.as_data_source(split=split)]

  assert all(code not in c for c in combinations("train"))
  heldout = combinations("heldout")
  assert len(heldout) == 4 and all(code in c for c in heldout)
  assert builder.info.metadata["held_out"] == [" ".join(held)]


def test_precomputed_text_embeddings_are_stored_with_each_clip(tmp_path):
  captions = shapes.all_captions()
  embeddings = np.random.default_rng(0).normal(size=(len(captions), 3, 4)).astype(np.float16)
  mask = np.zeros((len(captions), 3), bool)
  mask[:, :2] = True
  save_text_embeddings(tmp_path / "text.npz", captions, embeddings, mask)
  path = builders.build_shapes(tmp_path / "out", 3, R, 2, text_embeddings=tmp_path / "text.npz")
  example = tfds.builder_from_directory(path).as_data_source(split="train")[1]
  row = captions.index(example["caption"].decode())
  np.testing.assert_array_equal(example["text_embedding"], embeddings[row])
  np.testing.assert_array_equal(example["text_mask"], mask[row])


def test_a_caption_missing_from_the_embedding_table_fails_cleanly(tmp_path):
  save_text_embeddings(tmp_path / "text.npz", ["a red circle growing"], np.zeros((1, 2, 2)),
                       np.ones((1, 2), bool))
  with pytest.raises(UserError, match="has no entry for the caption"):
    builders.build_shapes(tmp_path / "out", 3, R, 2, text_embeddings=tmp_path / "text.npz")
  assert not (tmp_path / "out").exists()  # a failed build leaves no folder behind


def test_an_existing_dataset_is_never_overwritten(shapes_dir):
  before = _files(shapes_dir)
  with pytest.raises(UserError, match="already exists"):
    _build(shapes_dir.parent.parent, seed=9)
  assert _files(shapes_dir) == before


def test_a_split_past_tfds_memory_buffer_builds_without_tensorflow(tmp_path, monkeypatch):
  # TFDS spills a split larger than its buffer (1 GB; a 128x128 build of 2048 clips is
  # 1.6 GB) through TensorFlow, which is not installed: a 1 kB buffer stands in for it.
  from tensorflow_datasets.core import shuffle as tfds_shuffle
  monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 1024)
  path = builders.build_shapes(tmp_path / "out", 4, 32, 4)
  assert len(tfds.builder_from_directory(str(path)).as_data_source(split="train")) == 4
  assert tfds_shuffle.MAX_MEM_BUFFER_SIZE == 1024  # restored after the build


def test_a_split_larger_than_the_writer_may_hold_is_refused_before_any_work(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(builders, "writer_memory_limit", lambda: 10 * 32 * 32 * 3 * 4)
  builders.build_shapes(tmp_path / "fits", 10, 32, 4)
  with pytest.raises(UserError, match="half this machine's memory"):
    builders.build_shapes(tmp_path / "big", 11, 32, 4)
  assert not (tmp_path / "big").exists()


def test_an_exception_during_the_build_leaves_nothing_that_looks_complete(tmp_path,
                                                                          monkeypatch):
  real = shapes.render_clip
  calls = []

  def interrupted(*args, **kwargs):
    calls.append(1)
    if len(calls) > 3:
      raise KeyboardInterrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(shapes, "render_clip", interrupted)
  with pytest.raises(KeyboardInterrupt):
    _build(tmp_path)
  assert not (tmp_path / "shapes" / "1.0.0").exists()
  with pytest.raises(UserError, match="no complete dataset"):
    builders.find_dataset(tmp_path)


def test_a_killed_build_leaves_only_a_hidden_incomplete_folder(tmp_path):
  script = ("from lumiere_jax.data import builders; "
            f"builders.build_shapes({str(tmp_path)!r}, 100000, 32, 16)")
  process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".incomplete-*/shapes")):
      time.sleep(0.1)
    time.sleep(1.0)  # well into generating; the whole build would take minutes
    assert process.poll() is None, "the build finished before it could be interrupted"
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  assert [p.name.startswith(".incomplete-") for p in tmp_path.iterdir()] == [True]
  with pytest.raises(UserError, match="no complete dataset"):
    builders.find_dataset(tmp_path)


@pytest.mark.parametrize("kwargs,message", [
    (dict(resolution=48), "resolution 48 is not supported"),
    (dict(num_frames=0), "frames must be between 1 and 80"),
    (dict(num_frames=81), "frames must be between 1 and 80"),
    (dict(num_videos=0), "number of videos must be at least 1"),
    (dict(two_object_fraction=1.5), "two-object fraction"),
    (dict(held_out=["red hexagon growing"]), "held-out combination 'red hexagon growing'"),
])
def test_bad_shapes_options_get_one_clear_message(tmp_path, kwargs, message):
  with pytest.raises(UserError, match=message):
    _build(tmp_path, **kwargs)
  assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------
# users' videos


def _moving_square_frames(count, height=48, width=64):
  """Frame k: a grey level of 8 * (k + 1) everywhere plus a white square, so tests can
  recover which source frame a clip frame came from."""
  frames = np.zeros((count, height, width, 3), np.uint8)
  for k in range(count):
    frames[k] = 8 * (k + 1)
    frames[k, 10:30, 2 * k:2 * k + 20] = 255
  return frames


def _write_mp4(path, frames, fps, codec="libx264"):
  writer = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], fps=fps, codec=codec,
                                       quality=None, bitrate="2M", macro_block_size=1,
                                       output_params=["-crf", "10"] if codec == "libx264"
                                       else [], ffmpeg_log_level="error")
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()


@pytest.fixture(scope="module")
def video_src(tmp_path_factory):
  src = tmp_path_factory.mktemp("videos")
  _write_mp4(src / "a.mp4", _moving_square_frames(24), fps=12)
  _write_mp4(src / "d.webm", _moving_square_frames(12), fps=12, codec="libvpx")
  gif = [Image.fromarray(f) for f in _moving_square_frames(12)]
  gif[0].save(src / "b.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)
  (src / "clip_c").mkdir()
  for k, frame in enumerate(_moving_square_frames(10, 40, 40)):
    Image.fromarray(frame).save(src / "clip_c" / f"f{k + 1}.png")
  (src / "bad.mp4").write_bytes(os.urandom(4096))
  short = [Image.fromarray(f) for f in _moving_square_frames(3)]
  short[0].save(src / "short.gif", save_all=True, append_images=short[1:], duration=100)
  for name in ("a.mp4", "d.webm", "b.gif", "clip_c", "bad.mp4", "short.gif"):
    stem = name.split(".")[0]
    (src / f"{stem}.txt").write_text(f"caption of {stem}\n")
  return src


def _grey_levels(video):
  """The background grey of each frame (top-left corner), i.e. 8 * (source frame + 1)."""
  return video[:, :4, :4].reshape(len(video), -1).mean(axis=1)


def test_folder_builder_ingests_mp4_gif_webm_and_png_frames_and_skips_bad_files(
    video_src, tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    report = builders.build_folder(tmp_path, video_src, resolution=32, num_frames=T)
  assert report.written == 4
  assert sorted(report.skipped) == ["bad.mp4", "short.gif"]
  assert "unreadable" in report.skipped["bad.mp4"]
  assert "only 3 frames" in report.skipped["short.gif"]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("bad.mp4" in w for w in warnings) and any("short.gif" in w for w in warnings)

  source = tfds.builder_from_directory(report.path).as_data_source(split="train")
  examples = {e["source"].decode(): e for e in source}
  assert sorted(examples) == ["a.mp4", "b.gif", "clip_c", "d.webm"]
  for name, example in examples.items():
    assert example["video"].shape == (T, 32, 32, 3) and example["video"].dtype == np.uint8
    assert example["caption"].decode() == f"caption of {name.split('.')[0]}"
    expected = 8 * (np.arange(T) + 1)  # first T frames, in order (natural sort for PNGs)
    np.testing.assert_allclose(_grey_levels(example["video"]), expected, atol=3, err_msg=name)


def test_fps_resamples_and_too_short_videos_are_skipped(video_src, tmp_path):
  report = builders.build_folder(tmp_path / "fps4", video_src, 32, 8, fps=4)
  source = tfds.builder_from_directory(report.path).as_data_source(split="train")
  examples = {e["source"].decode(): e for e in source}
  # a.mp4: 24 frames at 12 fps = 2 s -> 8 frames at 4 fps: every third source frame
  # (which of the first three starts is ffmpeg's rounding)
  levels = _grey_levels(examples["a.mp4"]["video"])
  np.testing.assert_allclose(np.diff(levels), 8 * 3, atol=3)
  assert levels[0] <= 8 * 3 + 3
  assert "b.gif" in report.skipped and "at 4 fps" in report.skipped["b.gif"]
  assert "clip_c" in examples  # PNG folders carry no timing: taken frame by frame


def test_jsonl_captions(video_src, tmp_path):
  lines = [{"video": n, "caption": f"jsonl {n}"} for n in
           ("a.mp4", "b.gif", "clip_c", "d.webm", "bad.mp4", "short.gif")]
  captions = tmp_path / "captions.jsonl"
  captions.write_text("\n".join(json.dumps(line) for line in lines))
  report = builders.build_folder(tmp_path / "out", video_src, 32, T, captions=captions)
  source = tfds.builder_from_directory(report.path).as_data_source(split="train")
  assert {e["caption"].decode() for e in source} == {
      "jsonl a.mp4", "jsonl b.gif", "jsonl clip_c", "jsonl d.webm"}


def test_missing_caption_entries_are_reported_before_building(video_src, tmp_path):
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"video": "a.mp4", "caption": "x"}) + "\n")
  with pytest.raises(UserError, match=r"no caption for 5 of 6 videos \(b.gif, bad.mp4"):
    builders.build_folder(tmp_path / "out", video_src, 32, T, captions=captions)
  assert not (tmp_path / "out").exists()
  captions.write_text("{not json\n")
  with pytest.raises(UserError, match="line 1 is not valid JSON"):
    builders.build_folder(tmp_path / "out", video_src, 32, T, captions=captions)


def test_missing_sidecar_captions_are_reported(tmp_path):
  (tmp_path / "src").mkdir()
  _write_mp4(tmp_path / "src" / "x.mp4", _moving_square_frames(4), fps=4)
  with pytest.raises(UserError, match=r"sidecar .txt files has no caption for 1 of 1 videos"):
    builders.build_folder(tmp_path / "out", tmp_path / "src", 32, 2)


def test_a_folder_of_only_unusable_videos_writes_nothing(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "bad.mp4").write_bytes(b"not a video")
  (tmp_path / "src" / "bad.txt").write_text("c")
  with pytest.raises(UserError, match="none of the 1 videos could be used"):
    builders.build_folder(tmp_path / "out", tmp_path / "src", 32, 4)
  assert not (tmp_path / "out").exists()  # a failed build leaves no folder behind


@pytest.mark.parametrize("args,message", [
    (dict(src="missing", resolution=32, num_frames=4), "does not exist"),
    (dict(src="empty", resolution=32, num_frames=4), "no videos in"),
    (dict(src="empty", resolution=30, num_frames=4), "resolution 30 is not supported"),
    (dict(src="empty", resolution=32, num_frames=0), "frames must be at least 1"),
])
def test_bad_folder_inputs_get_one_clear_message(tmp_path, args, message):
  (tmp_path / "empty").mkdir()
  args["src"] = tmp_path / args["src"]
  with pytest.raises(UserError, match=message):
    builders.build_folder(tmp_path / "out", **args)


# ---------------------------------------------------------------------------------------
# command line


def test_cli_build_and_show(tmp_path, capsys):
  assert cli.main(["data", "build", "shapes", "--out", str(tmp_path / "d"), "--num-videos",
                   "3", "--resolution", "32", "--frames", "4", "--seed", "1",
                   "--two-object-fraction", "1"]) == 0
  assert cli.main(["data", "show", str(tmp_path / "d"), "--out",
                   str(tmp_path / "grid.png")]) == 0
  with Image.open(tmp_path / "grid.png") as grid:
    assert grid.size[0] >= 4 * 96 and grid.size[1] >= 3 * 96
  assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["build", "shapes", "--out", "{tmp}/x", "--num-videos", "2", "--resolution", "48"],
     "resolution 48 is not supported"),
    (["build", "shapes", "--out", "{tmp}/x", "--num-videos", "2", "--frames", "0"],
     "frames must be between 1 and 80"),
    (["build", "folder", "--src", "{tmp}/none", "--out", "{tmp}/x", "--resolution", "32",
      "--frames", "4"], "does not exist"),
    (["show", "{tmp}/none", "--out", "{tmp}/g.png"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
  argv = [a.format(tmp=tmp_path) for a in argv]
  assert cli.main(["data", *argv]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err
