"""A painter waiting for the model to load sees where it is: the daemon reports the load's stage in `model_state`,
and the shared editor core (used by the Krita docker and the GIMP setup window alike) turns it into a status line
with a progress bar, then into "ready" once the weights are in memory."""

from __future__ import annotations

import threading

from ace_editor import daemon as editor
from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload, types

from bridge_server.engine.manager import ModelManager


def test_the_editors_see_the_load_stage_while_the_first_job_waits_for_the_model(thread_daemon_factory, monkeypatch):
    placing, release = threading.Event(), threading.Event()
    real_place = ModelManager.place

    def place_when_released(self, pipe, device, tier):
        # The real placement, held back until the test has looked: loading the tiny model is otherwise too quick
        # to catch half-way.
        placing.set()
        assert release.wait(60)
        return real_place(self, pipe, device, tier)

    monkeypatch.setattr(ModelManager, "place", place_when_released)
    daemon = thread_daemon_factory()
    painter, watcher = connect(daemon), connect(daemon, client_id="watcher")
    try:
        before = watcher.model_status().to_wire()
        assert before["load"]["state"] == "unloaded" and editor.advice(before).state == "ready"
        handle = painter.submit(
            "inpaint",
            "a hat",
            image=rgba_payload(gradient_image(32, 32)),
            mask=gray_payload(ellipse_mask(32, 32)),
            params={"steps": 1},
        )
        assert placing.wait(60)
        during = watcher.model_status().to_wire()
        load = during["load"]
        # transformer, text encoders and VAE, the three installed LoRAs, placing (the tiny model runs on tier cpu)
        assert load["state"] == "loading" and load["tier"] == "cpu"
        assert load["stage"] == "placing (cpu)" and load["step"] == load["steps"] == 6
        advice = editor.advice(during)
        assert advice.state == "loading" and advice.busy and editor.keep_polling(during)
        assert advice.title == "Loading the model…"
        assert advice.detail.startswith(f"placing (cpu) ({load['step']} of {load['steps']}), tier cpu")
        assert 0 < advice.fraction < 1
        release.set()
        assert types(collect(handle))[-1] == "done"
        after = watcher.model_status().to_wire()
        assert after["load"]["state"] == "loaded" and "stage" not in after["load"]
        assert after["load"]["elapsed_s"] >= 0
        assert editor.advice(after).state == "ready" and not editor.keep_polling(after)
    finally:
        release.set()
        painter.close()
        watcher.close()
