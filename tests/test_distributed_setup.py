"""train/distributed.py: which jax.distributed set-up a run gets from its flags and the
launchers' environment (jax.distributed.initialize recorded, not started)."""

import jax
import pytest

from lumiere_jax.train import distributed


@pytest.fixture
def started(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args, **kwargs: calls.append((args, kwargs)))
  for name in (distributed.COORDINATOR_ADDRESS, distributed.NUM_PROCESSES,
               distributed.PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  return calls


def test_one_process_gets_a_loopback_coordinator_whose_heartbeat_outlives_a_stalled_step(
    started):
  """A one-process run has no peer to lose: jax's 100 s heartbeat default aborted a laptop
  run whose heartbeat thread starved while other jobs held both cores (stop 50)."""
  distributed.initialize()
  (address, count, index), kwargs = started[0]
  assert address.startswith("127.0.0.1:") and (count, index) == (1, 0)
  assert kwargs["heartbeat_timeout_seconds"] >= 24 * 3600


def test_a_cluster_from_the_launchers_environment_keeps_jax_failure_detection(
    started, monkeypatch):
  monkeypatch.setenv(distributed.COORDINATOR_ADDRESS, "127.0.0.1:1234")
  monkeypatch.setenv(distributed.NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.PROCESS_ID, "1")
  distributed.initialize()
  assert started == [(("127.0.0.1:1234", 2, 1), {})]  # a dead peer is still noticed
  distributed.initialize("127.0.0.1:99", 4, 3)  # flags win over the environment
  assert started[1] == (("127.0.0.1:99", 4, 3), {})
