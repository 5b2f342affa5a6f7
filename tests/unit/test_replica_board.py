"""The daemon's board of engine replicas (serve --ray) without a cluster: deaths, replicas that keep failing taken
out (their health check fails so Serve replaces them), replicas coming and going, and `--replicas auto`."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

if importlib.util.find_spec("ray") is None:
    pytest.skip("needs the ray extra", allow_module_level=True)

from bridge_server.jobs import replicas as rr  # noqa: E402


def board() -> rr.RayReplicas:
    pool = rr.RayReplicas({"root": "/models"}, address="10.0.0.5:6379", replicas=2)
    pool.target = pool.live = 2
    return pool


def test_a_replica_that_keeps_failing_is_taken_out_and_says_why():
    pool = board()
    pool._note({"replica": "a", "pid": 7, "jobs_done": 4, "failing": 1, "last_error": "oom"})
    assert pool.board["a"]["state"] == "ready"
    pool._note({"replica": "a", "failing": rr.FAILURES_TO_TAKE_OUT, "failures": 3, "last_error": "oom"})
    entry = pool.board["a"]
    assert entry["state"] == "taken out" and "3 failures in a row: oom" in entry["note"]
    changes = []
    pool.on_change = lambda: changes.append(1)
    pool._apply_status(1, {"b"})  # Serve replaced it: "a" is gone, "b" is new
    assert pool.board["a"]["state"] == "taken out" and pool.board["b"]["state"] == "ready"
    assert pool.live == 1 and changes == [1]
    state = pool.state()
    assert state["ray"] == {
        "address": "10.0.0.5:6379",
        "app": "ace-bridge",
        "reattached": False,
        "replicas": 2,
        "live": 1,
        "restarts": 0,
    }
    assert [r["replica"] for r in state["replicas"]] == ["b", "a"]  # ready ones first


def test_a_dead_replica_is_marked_and_capacity_drops_until_serve_replaces_it():
    pool = board()
    pool._note({"replica": "a", "pid": 7})
    pool.replica_lost("a", "ActorDiedError: killed")
    assert pool.board["a"]["state"] == "died" and pool.board["a"]["lost"] == 1
    assert pool.capacity() == 1 and pool.restarts == 1
    pool._apply_status(2, {"b", "c"})
    assert pool.board["a"]["state"] == "gone" and pool.capacity() == 2


def test_the_health_check_fails_only_after_failures_in_a_row_that_are_not_the_jobs_fault():
    cls = rr.EngineReplica.func_or_class
    replica = SimpleNamespace(failures=0, failing=0, last_error="")
    for _ in range(5):
        cls._failed(replica, "bad_request", "steps must be at least 1")
    cls.check_health(replica)
    for _ in range(rr.FAILURES_TO_TAKE_OUT):
        cls._failed(replica, "out_of_memory", "CUDA out of memory")
    with pytest.raises(RuntimeError, match="taken out"):
        cls.check_health(replica)


def test_replicas_auto_is_one_per_gpu_or_one_without():
    assert rr.replica_count("auto", 0) == 1
    assert rr.replica_count("auto", 3) == 3
    assert rr.replica_count("2", 8) == 2 and rr.replica_count(4, 0) == 4
