"""Jobs through the real daemon and the real FluxFill path (tiny model): progress, results, cancel, fairness."""

from __future__ import annotations

import numpy as np
from integration_helpers import (
    collect,
    connect,
    ellipse_mask,
    gradient_image,
    gray_payload,
    result_array,
    rgba_payload,
    types,
)

from bridge_server.jobs.gate import Gate


def inpaint(client, *, seed=7, steps=3, count=1, soft=False, **params):
    image, mask = gradient_image(), ellipse_mask(soft=soft)
    handle = client.submit(
        "inpaint",
        "a red hat",
        image=rgba_payload(image),
        mask=gray_payload(mask),
        params={"seed": seed, "steps": steps, "count": count, **params},
    )
    return handle, image, mask


def test_an_inpaint_job_reports_every_step_and_returns_a_result_clipped_to_the_selection(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        handle, image, mask = inpaint(client, steps=3)
        events = collect(handle)
        assert types(events) == ["started", "progress", "progress", "progress", "result", "done"]
        assert [e.step for e in events if e.TYPE == "progress"] == [1, 2, 3]
        assert all(e.total == 3 for e in events if e.TYPE == "progress")
        result = next(e for e in events if e.TYPE == "result")
        patch = result_array(result)
        assert patch.shape == (64, 96, 4)
        assert (patch[..., 3][mask == 0] == 0).all(), "alpha must be 0 outside the selection"
        assert patch[..., 3][mask == 255].max() == 255
        assert result.seed == 7 and result.provenance["task"] == "inpaint"
        assert result.provenance["prompt"] == "a red hat" and result.provenance["params"]["steps"] == 3
    finally:
        client.close()


def test_the_same_seed_gives_the_identical_image_and_another_seed_does_not(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        first = [e for e in collect(inpaint(client, seed=11)[0]) if e.TYPE == "result"][0]
        again = [e for e in collect(inpaint(client, seed=11)[0]) if e.TYPE == "result"][0]
        other = [e for e in collect(inpaint(client, seed=12)[0]) if e.TYPE == "result"][0]
        assert first.image.data == again.image.data
        assert first.image.data != other.image.data
    finally:
        client.close()


def test_count_three_gives_three_results_with_consecutive_seeds(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        events = collect(inpaint(client, seed=40, steps=1, count=3)[0])
        results = [e for e in events if e.TYPE == "result"]
        assert [(r.index, r.count, r.seed) for r in results] == [(0, 3, 40), (1, 3, 41), (2, 3, 42)]
        assert events[-1].TYPE == "done"
    finally:
        client.close()


def test_results_are_in_history_before_the_client_hears_of_them(thread_daemon_factory):
    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        handle, _, _ = inpaint(client)
        events = collect(handle)
        result = next(e for e in events if e.TYPE == "result")
        entry = f"{handle.id}-0"
        png = daemon.config.history_dir / f"{entry}.png"
        assert png.exists() and (daemon.config.history_dir / f"{entry}.json").exists()
        stored = daemon.state.history.load_image(entry)
        assert stored.tobytes() == result.image.data
    finally:
        client.close()


def test_cancel_a_queued_job(thread_daemon_factory):
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    client = connect(daemon)
    try:
        first, _, _ = inpaint(client)
        second, _, _ = inpaint(client)
        assert (first.position, second.position) == (0, 1)
        second.cancel()
        assert types(collect(second)) == ["cancelled"]
        daemon.config.gate.resume()
        assert types(collect(first))[-1] == "done"
    finally:
        client.close()


def test_cancel_a_running_job_stops_it_without_a_result_and_the_next_job_runs(thread_daemon_factory):
    gate = Gate()
    gate.hold_steps()
    daemon = thread_daemon_factory(gate=gate)
    client = connect(daemon)
    try:
        running, _, _ = inpaint(client, steps=5)
        events = running.events(timeout=60)
        assert next(events).TYPE == "started"
        assert next(events).TYPE == "progress"  # step 1 done, held before step 2
        running.cancel()
        rest = list(events)
        assert types(rest) == ["cancelled"]
        gate.run_freely()
        after, _, _ = inpaint(client, steps=2)
        assert types(collect(after))[-2:] == ["result", "done"]
        assert not (daemon.config.history_dir / f"{running.id}-0.png").exists()
    finally:
        client.close()


def test_two_editors_are_served_alternately(thread_daemon_factory):
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    krita, gimp = connect(daemon, "krita-1"), connect(daemon, "gimp-1")
    order: list[str] = []
    try:
        handles = [(name, inpaint(c, steps=1)[0]) for name, c in (("krita", krita), ("gimp", gimp)) for _ in range(5)]
        # While paused: positions follow the round-robin order krita, gimp, krita, gimp, ...
        positions = {h.id: h.position for _, h in handles}
        status = krita.status()
        queued_clients = [j["client_id"] for j in status.queue]
        assert queued_clients == ["krita-1", ""] * 5  # status names only the asking client's own jobs
        daemon.config.gate.resume()
        finished: dict[str, float] = {}
        for _, handle in handles:
            collect(handle)
        for _, handle in handles:
            meta = daemon.state.history.meta(f"{handle.id}-0")
            finished[handle.id] = meta["finished"]
        order = [name for name, h in sorted(handles, key=lambda nh: finished[nh[1].id])]
        assert order == ["krita", "gimp"] * 5
        assert positions[handles[0][1].id] == 0 and positions[handles[1][1].id] == 1
    finally:
        krita.close()
        gimp.close()


def test_queue_positions_are_pushed_when_they_change(thread_daemon_factory):
    daemon = thread_daemon_factory(gate=Gate(paused=True))
    client = connect(daemon)
    try:
        first, _, _ = inpaint(client, steps=1)
        second, _, _ = inpaint(client, steps=1)
        first.cancel()
        events = second.events(timeout=60)
        moved = next(events)
        assert moved.TYPE == "queued" and moved.position == 0
        daemon.config.gate.resume()
        assert [e.TYPE for e in events][-1] == "done"
    finally:
        client.close()


def test_bad_parameters_get_a_typed_error_and_the_connection_stays(thread_daemon_factory):
    from ace_protocol.client import JobError

    daemon = thread_daemon_factory()
    client = connect(daemon)
    try:
        for params, code, words in (
            ({"steps": 0}, "bad_request", "steps"),
            ({"stepz": 3}, "bad_request", "stepz"),
            ({"guidance": float("nan")}, "bad_request", "guidance"),
        ):
            try:
                inpaint(client, **params)
            except JobError as exc:
                assert exc.code.value == code and words in str(exc)
            else:
                raise AssertionError(f"{params} was accepted")
        try:
            client.submit("paint-by-numbers", "x")
        except JobError as exc:
            assert exc.code.value == "unknown_task"
        handle, _, _ = inpaint(client, steps=1)
        assert types(collect(handle))[-1] == "done"
    finally:
        client.close()


def test_an_image_over_the_pixel_limit_is_too_large(thread_daemon_factory):
    from ace_protocol.client import JobError

    daemon = thread_daemon_factory(max_pixels=64 * 64)
    client = connect(daemon)
    try:
        big = np.zeros((80, 80, 4), np.uint8)
        try:
            client.submit("inpaint", "x", image=rgba_payload(big))
        except JobError as exc:
            assert exc.code.value == "too_large"
        else:
            raise AssertionError("accepted an image over the limit")
    finally:
        client.close()


def test_an_editor_that_sends_one_job_at_a_time_still_gets_every_other_turn(thread_daemon_factory):
    """GIMP submits its next job only after the previous result; Krita queues several at once. While GIMP's job
    runs Krita queues two; GIMP's next job arrives while Krita's first runs and must go before Krita's second."""
    gate = Gate()
    gate.hold_steps()
    daemon = thread_daemon_factory(gate=gate)
    krita, gimp = connect(daemon, "krita-1"), connect(daemon, "gimp-1")
    try:
        g1, _, _ = inpaint(gimp, steps=1)
        g1_events = g1.events(timeout=60)
        assert next(g1_events).TYPE == "started"
        k1, _, _ = inpaint(krita, steps=1)
        k2, _, _ = inpaint(krita, steps=1)
        gate.release_steps(1)  # G1 finishes; K1 starts and is held at its first step
        assert types(list(g1_events))[-1] == "done"
        k1_events = k1.events(timeout=60)
        assert next(e for e in k1_events if e.TYPE != "queued").TYPE == "started"
        g2, _, _ = inpaint(gimp, steps=1)
        assert g2.position == 1  # before K2: Krita had the last turn
        gate.run_freely()
        for handle in (k1, k2, g2):
            collect(handle)
        finished = {h.id: daemon.state.history.meta(f"{h.id}-0")["finished"] for h in (g1, k1, k2, g2)}
        assert sorted(finished, key=finished.get) == [g1.id, k1.id, g2.id, k2.id]
    finally:
        krita.close()
        gimp.close()


def test_an_idle_engine_is_unloaded_and_the_next_job_loads_it_again(thread_daemon_factory):
    import time

    daemon = thread_daemon_factory(idle_unload_s=0.2)
    client = connect(daemon)
    try:
        assert types(collect(inpaint(client, steps=1)[0]))[-1] == "done"
        deadline = time.monotonic() + 30
        while daemon.state.engine.state()["state"] != "unloaded":  # the daemon's idle timer, not a test sleep
            assert time.monotonic() < deadline, "the idle engine was not unloaded"
            time.sleep(0.05)
        assert types(collect(inpaint(client, steps=1)[0]))[-1] == "done"
        assert daemon.state.engine.state()["state"] == "loaded"
    finally:
        client.close()
