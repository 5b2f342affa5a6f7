"""The queue with a replica pool, without Ray: an in-process stand-in for `RayReplicas` (two "replicas" running
the tiny engine on threads) shows several jobs running at once, positions counted in rounds of replicas, and a
replica lost mid-image costing a restart (journal, `queued` note, one result), not the job. Fast; the real Ray
path is tests/integration/test_ray_replicas.py."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from daemon_fixture import tiny_engine_factory
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload

from bridge_server.engine.base import JobCancelled
from bridge_server.jobs.gate import Gate
from bridge_server.jobs.pool import RemoteImage, ReplicaLost

pytestmark = pytest.mark.slow


class ThreadPool:
    """Two replicas of one engine on threads; the gate `hold` keeps images running until the test lets them go."""

    def __init__(self, engine, slots: int = 2) -> None:
        self.engine = engine
        self.slots = slots
        self.lock = threading.Lock()  # one engine object: images take turns, the queue does not know
        self.hold = threading.Event()
        self.hold.set()
        self.running = 0
        self.peak = 0
        self.lose_next = 0
        self.lost: list[str] = []

    def capacity(self) -> int:
        return self.slots

    async def make_image(self, job, *, key, piece, wants_previews, is_cancelled, on_start, on_step):
        loop = asyncio.get_running_loop()
        self.running += 1
        self.peak = max(self.peak, self.running)
        replica = f"r{self.running}"
        on_start({"replica": replica})
        try:
            if self.lose_next:
                self.lose_next -= 1
                on_step(1, job.params.get("steps", 1), None)
                raise ReplicaLost(replica, "ActorDiedError: killed by the test")
            await loop.run_in_executor(None, self.hold.wait)

            def run():
                with self.lock:
                    return self.engine.run(
                        job, lambda s, t: loop.call_soon_threadsafe(on_step, s, t, None), is_cancelled
                    )

            result = await loop.run_in_executor(None, run)
            if is_cancelled():
                raise JobCancelled()
            return RemoteImage(result.rgb, result.info, "tiny", {"replica": replica})
        finally:
            self.running -= 1

    def replica_lost(self, replica: str, reason: str) -> None:
        self.lost.append(replica)

    def available_tasks(self):
        return self.engine.available_tasks()

    def state(self):
        return {"state": "loaded", "model": "tiny", "tasks": self.available_tasks()}

    def run(self, *args, **kwargs):
        raise AssertionError("the queue must not call run() on a pool")

    def unload(self) -> None:
        pass

    def close(self) -> None:
        self.engine.close()


def submit(client, seed: int):
    return client.submit(
        "inpaint",
        "x",
        image=rgba_payload(gradient_image(32, 32)),
        mask=gray_payload(ellipse_mask(32, 32)),
        params={"seed": seed, "steps": 2},
    )


def test_two_replicas_run_two_jobs_at_once_and_positions_count_rounds(thread_daemon_factory, tiny_model_root):
    pools = []

    def factory():
        pools.append(ThreadPool(tiny_engine_factory(tiny_model_root)()))
        return pools[0]

    daemon = thread_daemon_factory(engine_factory=factory, gate=Gate())
    pool = pools[0]
    pool.hold.clear()
    with connect(daemon) as client:
        handles = [submit(client, seed) for seed in range(5)]
        # Two start at once; of the three waiting, two go in the next round (position 1), one after (position 2).
        daemon.call(lambda: None)
        positions = daemon.call(lambda: sorted(j.position for j in daemon.state.queue.queued_jobs()))
        running = daemon.call(lambda: len(daemon.state.queue.running_jobs()))
        pool.hold.set()
        for handle in handles:
            assert collect(handle)[-1].TYPE == "done"
    assert running == 2 and positions == [1, 1, 2]
    assert pool.peak == 2


def test_a_lost_replica_costs_a_restart_not_the_job(thread_daemon_factory, tiny_model_root):
    pools = []

    def factory():
        pools.append(ThreadPool(tiny_engine_factory(tiny_model_root)()))
        return pools[0]

    daemon = thread_daemon_factory(engine_factory=factory)
    pools[0].lose_next = 1
    with connect(daemon) as client:
        handle = submit(client, 5)
        events = collect(handle)
    assert [e.TYPE for e in events].count("result") == 1 and events[-1].TYPE == "done"
    [note] = [e.note for e in events if e.TYPE == "queued" and e.note]
    assert note.startswith("restarted on another GPU")
    journal = [json.loads(line) for line in daemon.config.journal_path.read_text().splitlines()]
    assert [e["replica"] for e in journal if e["ev"] == "restarted" and e["job_id"] == handle.id] == ["r1"]
    assert pools[0].lost == ["r1"]
