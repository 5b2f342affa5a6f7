"""Someone watching `ace-bridge serve` sees one line per job: who asked, what, how big, how long, and how it ended."""

from __future__ import annotations

import logging

from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload


def test_each_finished_job_leaves_one_line_saying_who_what_size_steps_seconds_and_outcome(
    thread_daemon_factory, caplog
):
    caplog.set_level(logging.INFO, logger="bridge_server.jobs.queue")
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        handle = client.submit(
            "inpaint",
            "a red hat",
            image=rgba_payload(gradient_image()),
            mask=gray_payload(ellipse_mask()),
            params={"seed": 3, "steps": 2},
        )
        collect(handle)
        stopped = client.submit(
            "inpaint",
            "a blue hat",
            image=rgba_payload(gradient_image()),
            mask=gray_payload(ellipse_mask()),
            params={"seed": 3, "steps": 100},
        )
        stopped.cancel()
        collect(stopped)
    finally:
        client.close()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "bridge_server.jobs.queue" and r.getMessage().startswith("job ")
    ]
    done = [line for line in lines if line.endswith(": done")]
    assert len(done) == 1, lines
    line = done[0]
    assert handle.id[:8] in line and "inpaint 96x64" in line and "2 steps" in line and " s: done" in line
    assert client.client_id[:12] in line
    assert [line for line in lines if stopped.id[:8] in line and line.endswith(": cancelled")], lines
