"""The grain pipeline: determinism, shuffling, sharding, views, resume in a fresh process."""

import hashlib
import json
import subprocess
import sys
import textwrap

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lumiere_jax.config import load_config
from lumiere_jax.data import builders, pipeline, shapes
from lumiere_jax.data.text_embeddings import save_text_embeddings
from lumiere_jax.errors import UserError
from lumiere_jax.models.text import SHAPES_WORDS, Tokenizer

N = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes")
  builders.build_shapes(out, N, 32, 16, seed=3)
  return out


def _config(variant="t2v", *overrides):
  return load_config(f"shapes_tiny:{variant}", ["data.batch_size=4", *overrides])


def _digest(batch) -> list:
  return [hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
          for v in batch["video"]]


def _ids_of_epochs(data_dir, process_index, process_count, num_epochs=1, seed=0):
  """Clip ids in the order one process reads them (batch size 1)."""
  source = pipeline.open_split(data_dir)
  dataset = pipeline.make_dataset(source, _Id(), batch_size=1, seed=seed,
                                  num_epochs=num_epochs, process_index=process_index,
                                  process_count=process_count)
  return [int(batch[0]) for batch in dataset]


class _Id(grain.transforms.RandomMap):
  def random_map(self, element, rng):
    del rng
    return element["id"]


def test_one_epoch_is_a_permutation_and_epochs_are_shuffled_differently(data_dir):
  ids = _ids_of_epochs(data_dir, 0, 1, num_epochs=2)
  first, second = ids[:N], ids[N:]
  assert sorted(first) == sorted(second) == list(range(N))
  assert first != second and first != list(range(N))
  assert ids == _ids_of_epochs(data_dir, 0, 1, num_epochs=2)
  assert ids != _ids_of_epochs(data_dir, 0, 1, num_epochs=2, seed=1)


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover_the_epoch(data_dir, count):
  shards = [_ids_of_epochs(data_dir, index, count) for index in range(count)]
  assert sum(len(s) for s in shards) == N
  assert sorted(i for s in shards for i in s) == list(range(N))
  # together they read the single-process order, interleaved
  single = _ids_of_epochs(data_dir, 0, 1)
  assert all(shards[k] == single[k::count] for k in range(count))


def test_train_iterator_batches(data_dir):
  batch = next(pipeline.make_train_iterator(_config(), data_dir, process_index=0,
                                            process_count=1))
  assert batch["video"].shape == (4, 16, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert batch["tokens"].shape == (4, 24) and batch["tokens"].dtype == np.int32
  tokenizer = Tokenizer(SHAPES_WORDS, 24)
  np.testing.assert_array_equal(batch["tokens"], tokenizer.encode(list(batch["caption"])))
  assert set(batch["caption"]) <= set(shapes.all_captions())


def test_batch_size_is_split_over_processes(data_dir):
  batch = next(pipeline.make_train_iterator(_config(), data_dir, process_index=1,
                                            process_count=2))
  assert batch["video"].shape[0] == 2
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    pipeline.make_train_iterator(_config(), data_dir, process_index=0, process_count=3)


def test_images_view_for_the_2d_model(data_dir):
  batch = next(pipeline.make_train_iterator(_config("t2i"), data_dir, process_index=0,
                                            process_count=1))
  assert batch["image"].shape == (4, 32, 32, 3) and "video" not in batch
  source = pipeline.open_split(data_dir)
  frames = pipeline.FramesSource(source, 16)
  assert len(frames) == 16 * N
  example = frames[16 * 5 + 7]
  np.testing.assert_array_equal(example["image"], source[5]["video"][7])
  assert example["caption"] == source[5]["caption"]


def test_conditional_stage_gets_deterministic_masks(data_dir):
  def first_batch():
    return next(pipeline.make_train_iterator(_config("cond"), data_dir, process_index=0,
                                             process_count=1))
  a, b = first_batch(), first_batch()
  assert a["mask"].shape == (4, 16, 32, 32, 1) and a["mask"].dtype == np.uint8
  np.testing.assert_array_equal(a["mask"], b["mask"])


def test_ssr_stage_gets_a_frame_window_and_a_low_resolution_copy(tmp_path):
  builders.build_shapes(tmp_path, 4, 64, 16, seed=1)
  config = _config("ssr", "data.resolution=64")  # x2 here: a cheap 64-pixel dataset
  batch = next(pipeline.make_train_iterator(config, tmp_path, process_index=0,
                                            process_count=1))
  assert batch["video"].shape == (4, 8, 64, 64, 3)
  assert batch["low_res_video"].shape == (4, 8, 32, 32, 3)
  clips = [e["video"] for e in pipeline.open_split(tmp_path)]
  for video in batch["video"]:  # a window of consecutive frames of one stored clip
    assert any(np.array_equal(video, clip[s:s + 8]) for clip in clips for s in range(9))
  blocks = batch["video"][0].reshape(8, 32, 2, 32, 2, 3).astype(np.float64).mean((2, 4))
  np.testing.assert_allclose(batch["low_res_video"][0], blocks, atol=0.5)


def test_text_embeddings_pass_through(tmp_path):
  captions = shapes.all_captions()
  rng = np.random.default_rng(0)
  table = tmp_path / "t.npz"
  embeddings = rng.normal(size=(len(captions), 24, 64)).astype(np.float16)
  save_text_embeddings(table, captions, embeddings, np.ones((len(captions), 24), bool))
  builders.build_shapes(tmp_path / "d", 4, 32, 16, text_embeddings=table)
  batch = next(pipeline.make_train_iterator(_config(), tmp_path / "d", process_index=0,
                                            process_count=1))
  assert batch["text_embedding"].shape == (4, 24, 64) and batch["text_mask"].shape == (4, 24)
  row = captions.index(batch["caption"][0])
  np.testing.assert_array_equal(batch["text_embedding"][0], embeddings[row])


@pytest.mark.parametrize("variant,overrides,message", [
    ("t2v", ["data.resolution=64"], "has 32x32 clips but data.resolution=64"),
    ("t2v", ["data.num_frames=32"], "has 16-frame clips but data.num_frames=32"),
])
def test_a_dataset_that_does_not_fit_the_config_is_refused(data_dir, variant, overrides,
                                                            message):
  with pytest.raises(UserError, match=message):
    pipeline.make_train_iterator(_config(variant, *overrides), data_dir, process_index=0,
                                 process_count=1)


def test_unknown_split_is_refused(data_dir):
  with pytest.raises(UserError, match="has no split 'heldout'"):
    pipeline.open_split(data_dir, "heldout")


def test_global_batch_and_model_range():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = {"video": np.full((2, 1, 2, 2, 3), 255, np.uint8), "caption": np.array(["a", "b"])}
  global_batch = pipeline.make_global_batch(batch, sharding)
  assert set(global_batch) == {"video"}
  assert global_batch["video"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(global_batch["video"]), batch["video"])
  np.testing.assert_allclose(pipeline.to_model_range(np.array([0, 255], np.uint8)), [-1, 1])


RESUME_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    import orbax.checkpoint as ocp
    from lumiere_jax.config import load_config
    from lumiere_jax.data import pipeline

    def main(data_dir, checkpoints, count, worker_count):
      config = load_config("shapes_tiny:t2v", ["data.batch_size=4"])
      iterator = pipeline.make_train_iterator(config, data_dir, process_index=0,
                                              process_count=1, worker_count=worker_count)
      manager = ocp.CheckpointManager(checkpoints, item_names=(pipeline.DATA_ITEM,))
      manager.restore(manager.latest_step(), args=ocp.args.Composite(
          data=pipeline.iterator_restore_args(iterator)))
      batches = [next(iterator) for _ in range(count)]
      print(json.dumps([[hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                         for v in b["video"]] for b in batches]))
      iterator.close()

    if __name__ == "__main__":
      main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
""")


def _resume_in_fresh_process(tmp_path, data_dir, worker_count):
  """Runs 5 batches, saves, runs 7 more; a fresh process restores and must see those 7."""
  iterator = pipeline.make_train_iterator(_config(), data_dir, process_index=0,
                                          process_count=1, worker_count=worker_count)
  for _ in range(5):
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", item_names=(pipeline.DATA_ITEM,))
  manager.save(5, args=ocp.args.Composite(data=pipeline.iterator_save_args(iterator)))
  manager.wait_until_finished()
  expected = [_digest(next(iterator)) for _ in range(7)]  # crosses the 6-batch epoch
  iterator.close()
  script = tmp_path / "resume.py"
  script.write_text(RESUME_SCRIPT)
  result = subprocess.run([sys.executable, str(script), str(data_dir), str(tmp_path / "ckpt"),
                           "7", str(worker_count)], capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_resume_in_a_fresh_process_sees_the_same_next_batches(tmp_path, data_dir):
  _resume_in_fresh_process(tmp_path, data_dir, worker_count=0)


def test_worker_processes_give_the_same_batches_and_resume(tmp_path, data_dir):
  def first(worker_count):
    iterator = pipeline.make_train_iterator(_config(), data_dir, process_index=0,
                                            process_count=1, worker_count=worker_count)
    digests = [_digest(next(iterator)) for _ in range(8)]
    iterator.close()
    return digests
  assert first(2) == first(0)
  _resume_in_fresh_process(tmp_path, data_dir, worker_count=1)
