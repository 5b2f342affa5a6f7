"""The request budget (bridge_server/server/pacing.py): a sender within its share is never held up, one past it
waits for its share to come round, and however many connections a sender opens it has one share."""

from __future__ import annotations

import pytest
from ace_protocol.messages import Ack, Cancel, Release, StatusRequest, Submit

from bridge_server.server.pacing import RequestPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pacer(**kwargs) -> tuple[RequestPacer, Clock]:
    clock = Clock()
    return RequestPacer(clock=clock, **kwargs), clock


def test_an_editor_within_its_share_is_never_delayed_even_beside_a_flood():
    p, clock = pacer(budget_per_s=100, burst=10, floor_per_s=1)
    waits_of_flood = [p.delay("conn:flood") for _ in range(200)]  # all at one instant
    editor_waits = []
    for _ in range(20):  # an editor asking twice a second, for ten seconds
        clock.now += 0.5
        editor_waits.append(p.delay("conn:editor", Submit(id="s", task="generate", prompt="a hat")))
    assert editor_waits == [0.0] * 20
    assert waits_of_flood[:10] == [0.0] * 10  # its burst
    assert waits_of_flood[10] > 0


def test_a_sender_past_its_share_is_spaced_at_the_share():
    p, clock = pacer(budget_per_s=100, burst=4, floor_per_s=1)
    p.delay("conn:other")  # two senders asking: 50 a second each
    waits = [p.delay("conn:flood") for _ in range(10)]
    assert waits[:4] == [0.0] * 4
    # Each request past the burst waits one share interval (1/50 s) more than the one before it.
    assert waits[4:] == pytest.approx([0.02 * k for k in range(1, 7)])
    clock.now += 0.12  # the debt (6 requests) is paid back: the next waits one interval again
    assert p.delay("conn:flood") == pytest.approx(0.02)


def test_one_sender_alone_may_use_the_whole_budget():
    p, _ = pacer(budget_per_s=100, burst=1, floor_per_s=1)
    waits = [p.delay("conn:only") for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.01, 0.02])


def test_the_share_shrinks_with_every_sender_asking_but_never_below_the_floor():
    p, clock = pacer(budget_per_s=100, burst=1, floor_per_s=5, active_window_s=2)
    for i in range(10):
        p.delay(f"conn:{i}")
    assert p.share_per_s() == pytest.approx(10)
    for i in range(10, 40):
        p.delay(f"conn:{i}")
    assert p.share_per_s() == pytest.approx(5)  # 100 / 40 is below the floor
    clock.now += 3  # they all went quiet: a newcomer has the budget to itself again
    p.delay("conn:new")
    assert p.share_per_s() == pytest.approx(100)


def test_memory_frees_and_reports_are_never_delayed():
    p, _ = pacer(budget_per_s=10, burst=1, floor_per_s=1)
    p.delay("conn:c", StatusRequest(id="s"))
    assert p.delay("conn:c", Cancel(job_id="j")) > 0
    assert p.delay("conn:c", Ack(job_ids=["j"])) == 0.0
    assert p.delay("conn:c", Release(segments=["s"])) == 0.0


def test_quiet_senders_are_forgotten_so_many_short_lived_connections_do_not_grow_it():
    p, clock = pacer(budget_per_s=100, burst=4, floor_per_s=2, active_window_s=1)
    for i in range(5000):
        p.delay(f"conn:{i}")
        clock.now += 0.002
    clock.now += 10
    p.delay("conn:last")
    assert len(p._buckets) == 1


def test_a_nonsense_budget_is_refused():
    with pytest.raises(ValueError, match="positive"):
        RequestPacer(budget_per_s=0)
