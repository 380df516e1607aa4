"""Two jax.distributed processes on this machine (CPU): each reads only its shard, the
shards are disjoint and cover the epoch, host batches become one global array, and each
process saves its iterator state through orbax."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lumiere_jax.data import builders, pipeline

N = 24
GLOBAL_BATCH = 4

WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import jax
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import numpy as np
    import orbax.checkpoint as ocp
    from lumiere_jax.config import load_config
    from lumiere_jax.data import pipeline

    def main(port, process_id, data_dir, out_dir, steps):
      jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                 process_id=process_id)
      config = load_config("shapes_tiny:t2v", [f"data.batch_size={GLOBAL_BATCH}"])
      iterator = pipeline.make_train_iterator(config, data_dir)  # index/count from jax
      mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
      sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
      digests, shapes = [], []
      for _ in range(steps):
        batch = next(iterator)
        digests += [hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                    for v in batch["video"]]
        global_batch = pipeline.make_global_batch(batch, sharding)
        shapes.append(list(global_batch["video"].shape))
        shards = sorted(global_batch["video"].addressable_shards, key=lambda s: s.index[0].start)
        local = np.concatenate([np.asarray(s.data) for s in shards])
        assert np.array_equal(local, batch["video"])
      manager = ocp.CheckpointManager(f"{out_dir}/ckpt", item_names=(pipeline.DATA_ITEM,))
      manager.save(steps, args=ocp.args.Composite(data=pipeline.iterator_save_args(iterator)))
      manager.wait_until_finished()
      with open(f"{out_dir}/process_{process_id}.json", "w") as f:
        json.dump({"index": jax.process_index(), "digests": digests, "shapes": shapes}, f)
      jax.distributed.shutdown()

    if __name__ == "__main__":
      main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
""").replace("GLOBAL_BATCH", str(GLOBAL_BATCH))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes")
  builders.build_shapes(out, N, 32, 16, seed=11)
  return out


def test_two_processes_read_disjoint_shards_that_cover_the_epoch(tmp_path, data_dir):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  steps = N // GLOBAL_BATCH  # one epoch of global batches
  port = _free_port()
  # two CPU devices per process, like a host with several accelerators
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  processes = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(data_dir),
                                 str(tmp_path), str(steps)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  for process in processes:
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-3000:]

  results = [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(2)]
  assert [r["index"] for r in results] == [0, 1]
  shards = [set(r["digests"]) for r in results]
  assert all(len(r["digests"]) == N // 2 == len(s) for r, s in zip(results, shards))
  assert not shards[0] & shards[1]
  everything = {hashlib.sha1(np.ascontiguousarray(e["video"]).tobytes()).hexdigest()[:16]
                for e in pipeline.open_split(data_dir)}
  assert shards[0] | shards[1] == everything
  assert all(shape == [GLOBAL_BATCH, 16, 32, 32, 3] for r in results for shape in r["shapes"])
  saved = sorted(p.name for p in (tmp_path / "ckpt" / str(steps) / "data").iterdir())
  assert "process_0-of-2.json" in saved and "process_1-of-2.json" in saved
