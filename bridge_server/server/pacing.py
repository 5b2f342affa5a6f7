"""How fast one sender's requests are handled: a token bucket per principal, refilled at that principal's share of
the daemon's request budget.

The queue caps what a sender *holds*; this caps how much of the event loop it *uses*. A token holder submitting
and cancelling as fast as it could on 32 connections was served ~400 requests a second and held every editor's
`accepted` back by up to a second (docs/security.md, `bench/hostile_load.py`). Here a principal (a connection, a
named token's person, another user; see `principal_of`) within its share is never delayed. One past it waits
before its next request is handled, and while it waits its connection is not read: its frames stay in the
kernel's socket buffers, costing the daemon nothing, while everyone else's requests are handled at once.

The share is the budget divided among the principals that asked for anything in the last `active_window_s`, so
one sender alone may use all of it, and 48 senders get a 48th each; never less than `floor_per_s`. Nothing is
refused: a client over its share sees slower answers, not errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ace_protocol.messages import Ack, Documents, Message, OfferDone, Release, ShmReady

#: Requests that only free memory or report what a client holds: never delayed, so a paced client can always give
#: back segments and results (delaying them would keep memory pinned longer).
UNPACED: tuple[type[Message], ...] = (Ack, Release, ShmReady, Documents, OfferDone)


@dataclass
class _Bucket:
    tokens: float
    refilled_at: float
    last_request: float


class RequestPacer:
    def __init__(
        self,
        budget_per_s: float = 150.0,
        burst: float = 32.0,
        floor_per_s: float = 2.0,
        active_window_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_per_s <= 0 or burst < 1 or floor_per_s <= 0:
            raise ValueError("the request budget, burst and floor must be positive")
        self.budget_per_s = budget_per_s
        self.burst = burst
        self.floor_per_s = floor_per_s
        self.active_window_s = active_window_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._pruned_at = clock()

    def share_per_s(self) -> float:
        """What each principal that is asking now may use per second."""
        return max(self.floor_per_s, self.budget_per_s / max(1, self._active(self._clock())))

    def delay(self, principal: str, message: Message | None = None) -> float:
        """Take one request of `principal`'s budget; the seconds to wait before handling it (0.0 within budget).

        A request past the budget runs into debt and waits until the refill has paid it back, so a principal's
        requests are spaced at its share however many connections it sends them on."""
        if isinstance(message, UNPACED):
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(principal)
        if bucket is None:
            bucket = self._buckets[principal] = _Bucket(self.burst, now, now)
        rate = self.share_per_s()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.refilled_at) * rate)
        bucket.refilled_at = now
        bucket.last_request = now
        bucket.tokens -= 1.0
        self._prune(now)
        return 0.0 if bucket.tokens >= 0 else -bucket.tokens / rate

    def _active(self, now: float) -> int:
        return sum(1 for b in self._buckets.values() if now - b.last_request <= self.active_window_s)

    def _prune(self, now: float) -> None:
        """Forget principals that have been quiet long enough to have a full bucket again (memory stays bounded by
        the principals of the last few seconds)."""
        if now - self._pruned_at < self.active_window_s:
            return
        self._pruned_at = now
        full_after = self.burst / self.floor_per_s + self.active_window_s
        for principal, bucket in list(self._buckets.items()):
            if now - bucket.last_request > full_after and bucket.tokens >= 0:
                del self._buckets[principal]
