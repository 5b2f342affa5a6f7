"""`serve --compile` warms the engine up at start: the one-time work happens before the first job, not in it,
leaves no trace in history and changes no result."""

from __future__ import annotations

import threading

import numpy as np
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload, types

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob


def job() -> EngineJob:
    image = gradient_image(64, 48)
    return EngineJob(
        task="inpaint", prompt="a hat", seed=3, params={"steps": 2}, image=image, mask=ellipse_mask(64, 48)
    )


def test_warm_up_loads_runs_each_size_and_changes_no_result(tiny_model_root):
    engine = AcePlusEngine(tiny_model_root, t5_max_length=16, idle_unload_s=None)
    before = engine.run(job(), lambda *_: None, lambda: False).rgb
    engine.unload()
    timings = engine.warm_up(sizes=((96, 64), (64, 64)))
    assert list(timings) == ["96x64", "64x64"] and engine.state()["state"] == "loaded"
    after = engine.run(job(), lambda *_: None, lambda: False).rgb
    assert np.array_equal(before, after)
    engine.close()


def test_the_daemon_warms_up_before_the_first_job(thread_daemon_factory, tiny_model_root, monkeypatch):
    order: list[str] = []
    real_warm_up = AcePlusEngine.warm_up

    def recorded_warm_up(self, sizes=((96, 64),)):
        order.append("warm-up")
        return real_warm_up(self, sizes)

    monkeypatch.setattr(AcePlusEngine, "warm_up", recorded_warm_up)
    daemon = thread_daemon_factory(extra={"warm_up": True})
    seen = threading.Event()
    daemon.call(
        lambda: daemon.state.queue.listeners.append(
            lambda job, message: (order.append(message.TYPE), seen.set()) if message.TYPE == "started" else None
        )
    )
    client = connect(daemon)
    try:
        handle = client.submit(
            "inpaint",
            "x",
            image=rgba_payload(gradient_image(32, 32)),
            mask=gray_payload(ellipse_mask(32, 32)),
            params={"steps": 1},
        )
        assert types(collect(handle))[-1] == "done"
        assert order[:2] == ["warm-up", "started"]
        entries = daemon.state.history.entries()[0]
        assert entries == 1  # the warm-up made no result
    finally:
        client.close()
