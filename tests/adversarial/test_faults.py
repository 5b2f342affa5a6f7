"""Issue 7, faults that must lose nothing. Every mid-job fault is placed with the daemon's step gate: the engine is
held between two steps, the fault is armed, then the step is released; nothing waits on time."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ace_protocol.client import BridgeClient
from ace_protocol.errors import ErrorCode
from adversarial_helpers import (
    FaultyEngine,
    client_for,
    fill_up,
    inpaint_kwargs,
    need_root_for_mounts,
    read_only_bind,
    small_tmpfs,
    tap,
)
from daemon_fixture import isolated_env, tiny_engine_factory

from bridge_server.engine.base import EngineError
from bridge_server.jobs.gate import Gate

HERE = Path(__file__).resolve().parent


def types(events) -> list[str]:
    return [e.TYPE for e in events]


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def faulty(thread_daemon_factory, tiny_model_root):
    """A daemon whose engine raises on command from inside its step loop, with the steps held."""
    holder: dict[str, FaultyEngine] = {}
    inner_factory = tiny_engine_factory(tiny_model_root)

    def factory():
        holder["engine"] = FaultyEngine(inner_factory())
        return holder["engine"]

    gate = Gate()
    daemon = thread_daemon_factory(engine_factory=factory, gate=gate)
    return daemon, holder["engine"], gate


@pytest.mark.parametrize(
    ("fault", "code", "words"),
    [
        (RuntimeError("simulated engine bug"), "internal", "simulated engine bug"),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
            "out_of_memory",
            "out of memory",
        ),
        (EngineError(ErrorCode.OUT_OF_MEMORY, "out of memory at the VAE decode"), "out_of_memory", "VAE"),
    ],
    ids=["raises", "torch-oom", "engine-oom"],
)
def test_a_mid_job_engine_failure_fails_that_job_with_its_code_and_the_next_job_runs(faulty, fault, code, words):
    daemon, engine, gate = faulty
    events = tap(daemon)
    client = client_for(daemon, "fault-victim")
    try:
        gate.hold_steps()
        doomed = client.submit("inpaint", "doomed", **inpaint_kwargs(steps=3))
        following = client.submit("inpaint", "next", **inpaint_kwargs(steps=2))
        events.wait_for(lambda c, j, m: j == doomed.id and m.TYPE == "progress" and m.step == 1)
        engine.arm(fault)  # the engine sits in step 1's callback; the fault fires as that step returns
        gate.run_freely()
        doomed_events = list(doomed.events(timeout=120))
        assert types(doomed_events)[-1] == "failed"
        failed = doomed_events[-1]
        assert failed.code == code and words in failed.message
        assert "result" not in types(doomed_events)
        after = list(following.events(timeout=120))
        assert types(after)[-2:] == ["result", "done"]
        assert client.status().TYPE == "status_reply"
    finally:
        client.close()


def test_a_client_that_disconnects_mid_job_gets_the_result_an_hour_later(thread_daemon_factory):
    clock = FakeClock()
    gate = Gate()
    daemon = thread_daemon_factory(gate=gate, clock=clock)
    events = tap(daemon)
    client = client_for(daemon, "laptop-lid")
    gate.hold_steps()
    handle = client.submit("inpaint", "while away", **inpaint_kwargs(steps=2))
    job_id = handle.id
    events.wait_for(lambda c, j, m: j == job_id and m.TYPE == "progress")
    session = client.session
    client.close()  # the lid closes mid-job
    gate.run_freely()
    events.wait_type(job_id, "done")
    clock.advance(3600)  # an hour later
    back = BridgeClient(daemon.url, daemon.token, client_id="laptop-lid", session=session, reconnect_timeout=0)
    back.connect()
    try:
        assert back.welcome.resumed and job_id in back.welcome.pending
        handles = back.fetch_unacknowledged(wait=30)
        assert [h.id for h in handles] == [job_id]
        got = list(handles[0].events(timeout=60))
        assert types(got) == ["result", "done"]
        result = got[0]
        pixels = np.frombuffer(result.image.data, np.uint8).reshape(result.image.height, result.image.width, 4)
        assert pixels.shape == (32, 32, 4) and result.provenance["job_id"] == job_id
        back.ack(job_id)
        assert back.status().TYPE == "status_reply"  # the ack is processed before this reply
    finally:
        back.close()
    again = BridgeClient(daemon.url, daemon.token, client_id="laptop-lid", reconnect_timeout=0)
    again.connect()
    try:
        assert again.welcome.pending == []
    finally:
        again.close()


def test_results_past_retention_are_not_redelivered_but_stay_in_history(thread_daemon_factory):
    clock = FakeClock()
    daemon = thread_daemon_factory(clock=clock)
    client = client_for(daemon, "gone-for-a-week")
    handle = client.submit("inpaint", "x", **inpaint_kwargs())
    job_id = handle.id
    client.close()  # before reading anything: the result waits for the client
    events = tap(daemon)
    if daemon.call(lambda: daemon.state.queue.jobs[job_id].state.value) != "done":
        events.wait_type(job_id, "done")
    clock.advance(daemon.config.retention_s + 1)
    back = client_for(daemon, "gone-for-a-week")
    try:
        assert back.welcome.pending == []
    finally:
        back.close()
    assert daemon.call(lambda: daemon.state.history.meta(f"{job_id}-0")) is not None


# ------------------------------------------------------------------ SIGKILL


def _gated_process(home: Path, model: Path, budget: int | None) -> tuple[subprocess.Popen, int]:
    args = [
        sys.executable,
        str(HERE / "gated_daemon.py"),
        "--config",
        str(home / "config"),
        "--data",
        str(home / "data"),
        "--model",
        str(model),
    ]
    if budget is not None:
        args += ["--step-budget", str(budget)]
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(args, env=isolated_env(home), stdout=subprocess.PIPE, stderr=log)
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until the daemon listens (or dies: empty line)
    if not line:
        process.wait(30)
        raise RuntimeError(f"gated daemon died:\n{(home / 'daemon.log').read_text(errors='replace')}")
    return process, json.loads(line)["port"]


def test_sigkill_mid_job_keeps_finished_results_and_reports_the_interrupted_job(tmp_path, tiny_model_root):
    home = tmp_path / "home"
    home.mkdir()
    # One step may run in all: job A (1 step) finishes, job B is then held inside its first step.
    process, port = _gated_process(home, tiny_model_root, budget=1)
    try:
        token = (home / "config" / "token").read_text().strip()
        url = f"ws://127.0.0.1:{port}/v1/ws"
        client = BridgeClient(url, token, client_id="kill-victim", reconnect_timeout=0)
        client.connect()
        session = client.session
        finished = client.submit("inpaint", "finished before the kill", **inpaint_kwargs(steps=1))
        finished_events = list(finished.events(timeout=120))
        assert types(finished_events)[-2:] == ["result", "done"]
        before_pixels = finished_events[-2].image.data
        running = client.submit("inpaint", "running at the kill", **inpaint_kwargs(steps=3))
        queued = client.submit("inpaint", "queued at the kill", **inpaint_kwargs(steps=1))
        for event in running.events(timeout=120):
            if event.TYPE == "progress":
                break  # the engine now waits in the gate after step 1: the job is mid-run
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    history = home / "data" / "history"
    assert (history / f"{finished.id}-0.png").is_file() and (history / f"{finished.id}-0.json").is_file()

    process, port = _gated_process(home, tiny_model_root, budget=None)
    try:
        url = f"ws://127.0.0.1:{port}/v1/ws"
        client = BridgeClient(url, token, client_id="kill-victim", session=session, reconnect_timeout=0)
        client.connect()
        assert set(client.welcome.pending) == {finished.id, running.id, queued.id}
        handles = {h.id: h for h in client.fetch_unacknowledged(wait=30)}
        assert set(handles) == {finished.id, running.id, queued.id}
        redelivered = list(handles[finished.id].events(timeout=60))
        assert types(redelivered) == ["result", "done"]
        assert redelivered[0].image.data == before_pixels
        for job in (running, queued):
            outcome = list(handles[job.id].events(timeout=60))
            assert types(outcome) == ["failed"]
            assert outcome[0].code == "interrupted" and "daemon stopped" in outcome[0].message
        # And the daemon is healthy after the crash.
        fresh = list(client.submit("inpaint", "after restart", **inpaint_kwargs(steps=1)).events(timeout=120))
        assert types(fresh)[-1] == "done"
        client.close()
    finally:
        process.terminate()
        process.wait(30)


# ------------------------------------------------------------------ disk faults (real mounts)


def _job_completes_from_memory(daemon, client_id: str) -> str:
    client = client_for(daemon, client_id)
    try:
        handle = client.submit("inpaint", "nowhere to keep it", **inpaint_kwargs())
        events = list(handle.events(timeout=120))
        assert types(events)[-2:] == ["result", "done"]
        assert events[-2].image.width == 32
        warnings = client.status().engine.get("warnings", [])
        session = client.session
    finally:
        client.close()
    # Not acknowledged: a reconnect gets it again, from memory.
    back = BridgeClient(daemon.url, daemon.token, client_id=client_id, session=session, reconnect_timeout=0)
    back.connect()
    try:
        again = back.fetch_unacknowledged(wait=30)
        assert [h.id for h in again] == [handle.id]
        assert types(list(again[0].events(timeout=60))) == ["result", "done"]
    finally:
        back.close()
    return "\n".join(warnings)


def test_a_full_history_disk_still_completes_and_delivers_and_says_why(thread_daemon_factory, tmp_path, caplog):
    need_root_for_mounts()
    history = tmp_path / "data" / "history"
    caplog.set_level(logging.WARNING)
    with small_tmpfs(history, "64k"):
        fill_up(history)
        daemon = thread_daemon_factory()
        warnings = _job_completes_from_memory(daemon, "disk-full")
        daemon.stop()
    assert "cannot write to the history folder" in warnings and "No space left" in warnings
    assert "kept in memory only" in warnings
    assert any("No space left" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_a_read_only_data_folder_still_completes_and_delivers_and_says_why(thread_daemon_factory, tmp_path, caplog):
    need_root_for_mounts()
    source, data = tmp_path / "data-src", tmp_path / "data"
    (source / "history").mkdir(parents=True)
    caplog.set_level(logging.WARNING)
    with read_only_bind(source, data):
        with pytest.raises(OSError):
            (data / "probe").write_text("x")  # really read-only, even for root
        daemon = thread_daemon_factory()
        warnings = _job_completes_from_memory(daemon, "read-only")
        daemon.stop()
    assert "history folder" in warnings and "kept in memory only" in warnings
    assert "journal" in warnings  # the queue journal cannot be kept either, and it says so
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "history folder" in logged and "journal" in logged
    assert not os.listdir(source / "history")
