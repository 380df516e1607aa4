"""Video and image files: formats round-trip, writes are atomic, X-T slices."""

import numpy as np
import pytest

from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.io import video as video_io


def shapes_video(frames=16, size=32):
  """A square moving right over a black background, with two identical frames in a row
  (GIF writers that merge them would change T)."""
  video = np.zeros((frames, size, size, 3), np.uint8)
  for t in range(frames):
    x = min(t, frames - 2)
    video[t, 8:16, x:x + 8] = (220, 40, 40)
  return video


def test_npy_and_gif_round_trip_exactly(tmp_path):
  video = shapes_video()
  for suffix in (".npy", ".gif"):
    path = video_io.write_video(tmp_path / f"v{suffix}", video)
    np.testing.assert_array_equal(video_io.read_video(path), video)


def test_mp4_round_trips_closely(tmp_path):
  video = shapes_video()
  back = video_io.read_video(video_io.write_video(tmp_path / "v.mp4", video))
  assert back.shape == video.shape and back.dtype == np.uint8
  assert np.abs(back.astype(int) - video).mean() < 3


def test_float_uint8_conversion():
  x = np.array([-1.5, -1.0, 0.0, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(video_io.to_uint8(x), [0, 0, 128, 255, 255])
  np.testing.assert_allclose(video_io.from_uint8(np.array([0, 255], np.uint8)), [-1.0, 1.0])


def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "v.npy"
  video_io.write_video(target, shapes_video())
  before = target.read_bytes()

  def broken_save(f, array):
    f.write(b"half a file")
    raise OSError("disk full")

  monkeypatch.setattr(video_io.np, "save", broken_save)
  with pytest.raises(OSError):
    video_io.write_video(target, np.zeros_like(shapes_video()))
  assert target.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


def test_atomic_write_creates_parent_directories(tmp_path):
  atomic.write_text(tmp_path / "a" / "b" / "m.jsonl", "x\n")
  assert (tmp_path / "a" / "b" / "m.jsonl").read_text() == "x\n"


def test_xt_slice_shows_the_motion(tmp_path):
  video = shapes_video()
  xt = video_io.xt_slice(video, row=10)
  assert xt.shape == (16, 32, 3)
  left_edges = [int(np.argmax(xt[t, :, 0] > 0)) for t in range(16)]
  assert left_edges == [min(t, 14) for t in range(16)]
  both = video_io.xt_slices(np.stack([video, video]))
  assert both.shape == (16, 65, 3)
  path = video_io.write_png(tmp_path / "xt.png", both, scale=4)
  from PIL import Image
  assert Image.open(path).size == (65 * 4, 16 * 4)


@pytest.mark.parametrize("name,content,match", [
    ("v.avi", None, "unsupported video format"),
    ("missing.npy", None, "not found"),
    ("bad.npy", np.zeros((4, 4), np.float32), "uint8"),
])
def test_bad_video_files_are_one_line_errors(tmp_path, name, content, match):
  path = tmp_path / name
  if content is not None:
    np.save(path, content)
  with pytest.raises(UserError, match=match):
    video_io.read_video(path)
