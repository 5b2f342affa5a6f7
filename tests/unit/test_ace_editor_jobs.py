"""ace_editor.jobs: one job life cycle for both plug-ins, over typed protocol messages (a scripted client)."""

from __future__ import annotations

import random
import threading
import time

import pytest
from ace_editor import jobs
from ace_protocol.client import ClientError, DaemonNotRunning
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Cancelled, Done, Failed, Progress, Queued, Result, Started

PIXEL = ImagePayload(1, 1, "rgba8", b"\x01\x02\x03\xff")


def result(index: int, count: int = 2, seed: int = 5) -> Result:
    return Result(
        job_id="job-1", index=index, count=count, seed=seed + index, image=PIXEL, provenance={"model": "tiny"}
    )


class FakeHandle:
    """A job handle that replays scripted events; `cancel()` ends a blocked one with `cancelled`."""

    def __init__(self, events, block_after: bool = False) -> None:
        self.id, self.position, self.seed = "job-1", 2, 5
        self._events = list(events)
        self._block = block_after
        self.cancelled = threading.Event()

    def events(self, timeout=None):
        yield from self._events
        while self._block and not self.cancelled.is_set():
            time.sleep(0.01)
        if self.cancelled.is_set():
            yield Cancelled(job_id=self.id)

    def cancel(self) -> None:
        self.cancelled.set()


class FakeClient:
    def __init__(self, handle: FakeHandle | None = None, error: Exception | None = None) -> None:
        self.handle, self.error, self.submitted = handle, error, []

    def submit(self, task, prompt, **kwargs):
        if self.error is not None:
            raise self.error
        self.submitted.append((task, prompt, kwargs))
        return self.handle


def request(**params) -> jobs.JobRequest:
    return jobs.JobRequest("k1", "inpaint", "a vase", PIXEL, None, [], params)


def test_run_job_reports_typed_events_and_ends_with_the_decoded_results():
    handle = FakeHandle(
        [
            Queued(job_id="job-1", position=1),
            Started(job_id="job-1"),
            Progress(job_id="job-1", step=1, total=2),
            result(1),
            result(0),
            Done(job_id="job-1"),
        ]
    )
    client, seen = FakeClient(handle), []
    jobs.run_job(client, request(steps=2), lambda lid, ev: seen.append((lid, ev)))
    kinds = [type(ev).__name__ for _, ev in seen]
    assert kinds == ["Accepted", "Queued", "Started", "Progress", "Result", "Result", "JobEnded"]
    assert seen[0][1].job_id == "job-1" and seen[0][1].position == 2 and {lid for lid, _ in seen} == {"k1"}
    ended = seen[-1][1]
    assert ended.state == "done" and [r.index for r in ended.results] == [0, 1]
    assert ended.results[0].rgba == b"\x01\x02\x03\xff" and ended.results[1].seed == 6
    assert client.submitted[0][2]["params"] == {"steps": 2}


def test_run_job_turns_failures_into_a_failed_end():
    seen = []
    jobs.run_job(FakeClient(error=DaemonNotRunning("ws://x")), request(), lambda lid, ev: seen.append(ev))
    assert seen[-1].state == "failed" and seen[-1].code == "connection"
    seen.clear()
    jobs.run_job(
        FakeClient(FakeHandle([Failed(code="out_of_memory", message="smaller", job_id="job-1")])),
        request(),
        lambda lid, ev: seen.append(ev),
    )
    assert (seen[-1].state, seen[-1].code, seen[-1].message) == ("failed", "out_of_memory", "smaller")
    seen.clear()
    png = Result(job_id="job-1", index=0, count=1, seed=1, image=ImagePayload(1, 1, "png", b"\x89PNG"))
    jobs.run_job(FakeClient(FakeHandle([png, Done(job_id="job-1")])), request(), lambda lid, ev: seen.append(ev))
    assert seen[-1].state == "failed" and seen[-1].code == "internal" and "png" in seen[-1].message


def test_a_cancel_before_the_daemon_accepted_is_sent_once_it_does():
    handle = FakeHandle([Started(job_id="job-1")], block_after=True)
    req, seen = request(), []
    jobs.cancel_job(req)
    jobs.run_job(FakeClient(handle), req, lambda lid, ev: seen.append(ev))
    assert handle.cancelled.is_set() and seen[-1].state == "cancelled"


def test_status_lines_and_fractions():
    assert jobs.status_text(Queued(job_id="j", position=3)) == "Queued: position 3"
    assert jobs.status_text(Queued(job_id="j", position=0)) == "Waiting: next in line"
    assert jobs.status_text(Progress(job_id="j", step=2, total=8, eta_s=75)) == "Step 2/8, about 1:15 left"
    assert jobs.status_text(Progress(job_id="j", step=2, total=8, image_index=1)) == "Step 2/8 (image 2)"
    assert jobs.status_text(jobs.JobEnded("j", "failed", message="no")) == "Failed: no"
    assert jobs.progress_fraction(Progress(job_id="j", step=1, total=4)) == 0.25
    assert jobs.progress_fraction(Queued(job_id="j", position=1)) is None
    assert jobs.format_eta(4.4) == "4 s"


class RecordingUi(jobs.HeadlessUi):
    def __init__(self, cancel: bool = False) -> None:
        super().__init__()
        self.updates: list = []
        self._cancel = cancel

    def progress(self, fraction, text):
        self.updates.append((fraction, text))

    def preview(self, image):
        self.updates.append(("preview", image.format))

    def cancel_requested(self):
        return self._cancel


def test_wait_for_job_collects_results_in_order_and_shows_previews():
    shot = ImagePayload(8, 8, "jpeg", b"\xff\xd8")
    job = FakeHandle(
        [
            Queued(job_id="job-1", position=1),
            Started(job_id="job-1"),
            Progress(job_id="job-1", step=1, total=2, preview=shot),
            result(1),
            result(0),
            Done(job_id="job-1"),
        ]
    )
    ui = RecordingUi()
    outcome = jobs.wait_for_job(job, ui, prefix="ACE++: ")
    assert [r.index for r in outcome.results] == [0, 1]
    assert (0.5, "ACE++: Step 1/2") in ui.updates and (None, "ACE++: Queued: position 1") in ui.updates
    assert ui.updates.index((0.5, "ACE++: Step 1/2")) < ui.updates.index(("preview", "jpeg"))


def test_wait_for_job_reports_failure_and_cancel():
    with pytest.raises(jobs.UserError, match=r"failed \(out_of_memory\): smaller"):
        jobs.wait_for_job(FakeHandle([Failed(code="out_of_memory", message="smaller", job_id="job-1")]), RecordingUi())
    job = FakeHandle([Started(job_id="job-1")], block_after=True)
    with pytest.raises(jobs.JobCancelled):
        jobs.wait_for_job(job, RecordingUi(cancel=True))
    assert job.cancelled.is_set()


def test_pick_seed_fixed_and_random():
    assert jobs.pick_seed("fixed", 42) == 42
    assert jobs.pick_seed("fixed", -5) == 0
    assert jobs.pick_seed("random", 42, random.Random(1)) == jobs.pick_seed("random", 0, random.Random(1))


def test_task_not_offered_by_the_loaded_model_is_named():
    offered = [{"name": "inpaint"}, {"name": "generate"}]
    jobs.check_offered("inpaint", offered, {"model": "tiny"})
    with pytest.raises(jobs.UserError) as err:
        jobs.check_offered("instruct", offered, {"model": "tiny"})
    assert (
        "Edit with Instruction" in str(err.value) and "tiny" in str(err.value) and "generate, inpaint" in str(err.value)
    )


def test_describe_error_never_only_a_traceback():
    down = DaemonNotRunning("ws://x", "start it")
    assert jobs.describe_error(down) == str(down)  # the client's own message says what to do
    assert jobs.describe_error(ClientError("plain words")) == "plain words"
    assert jobs.describe_error(jobs.JobCancelled()) == "The job was cancelled."
    text = jobs.describe_error(KeyError("x"), console="GIMP's error console")
    assert "KeyError" in text and "GIMP's error console" in text
