"""An interrupted save of ours is set aside (kept, renamed), junk is left to be refused."""

import pytest

from lumiere_jax.errors import UserError
from lumiere_jax.train import checkpoint


def test_an_interrupted_save_is_set_aside_and_junk_is_refused(tmp_path):
  folder = tmp_path / "checkpoints"
  (folder / "4" / checkpoint.STATE).mkdir(parents=True)  # orbax renamed, metadata not written
  (folder / "4" / checkpoint.STATE / "data").write_bytes(b"partial")
  moved = checkpoint.set_aside_interrupted_saves(folder)
  assert [p.name for p in moved] == [".interrupted-4"]
  assert (folder / ".interrupted-4" / checkpoint.STATE / "data").read_bytes() == b"partial"
  assert checkpoint.numbered_entries(folder) == []
  checkpoint.check_checkpoints_folder(folder)  # nothing numbered is left to refuse

  (folder / "7").mkdir()
  (folder / "7" / "notes.txt").write_text("unrelated")
  assert checkpoint.set_aside_interrupted_saves(folder) == []
  with pytest.raises(UserError, match="7 is not a complete checkpoint"):
    checkpoint.check_checkpoints_folder(folder)
