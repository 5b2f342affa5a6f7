"""The queue's pause switch and step gate.

Users pause and resume the whole queue with it; tests hold a running job between two steps with it, so
"cancel while running" and "disconnect mid-job" happen at a known point instead of after a sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Gate:
    def __init__(self, *, paused: bool = False, step_budget: int | None = None) -> None:
        self._cond = threading.Condition()
        self._paused = paused
        self._budget = step_budget  # None: steps run freely; n: n more steps may run, then wait

    # -- queue pause (checked before a job starts)
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def wait_until_running(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Block (engine thread) while the queue is paused."""
        with self._cond:
            while self._paused and not should_stop():
                self._cond.wait(poll_s)

    # -- step gate (checked after every denoising step)
    def hold_steps(self) -> None:
        with self._cond:
            self._budget = 0

    def release_steps(self, count: int = 1) -> None:
        with self._cond:
            self._budget = (self._budget or 0) + count
            self._cond.notify_all()

    def run_freely(self) -> None:
        with self._cond:
            self._budget = None
            self._cond.notify_all()

    def wait_step(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Block (engine thread) until a step may run; returns at once when the job is cancelled."""
        with self._cond:
            while self._budget == 0 and not should_stop():
                self._cond.wait(poll_s)
            if self._budget and not should_stop():
                self._budget -= 1
