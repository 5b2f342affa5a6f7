"""The daemon's state for one app: config, engine, history, journal, queue, sessions. Carried by the aiohttp app
under `STATE` (never a module global), read by the sessions, the health route and the panel."""

from __future__ import annotations

import hmac
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from ace_protocol.tasks import STEPS, TASKS
from aiohttp import web

from bridge_server.config import ServerConfig
from bridge_server.engine.base import Engine
from bridge_server.jobs.journal import Journal
from bridge_server.jobs.queue import JobQueue
from bridge_server.server.hub import Hub
from bridge_server.server.model_service import ModelService
from bridge_server.server.pacing import RequestPacer
from bridge_server.server.people import PeopleBook
from bridge_server.server.security import ConnectionGuard, FailureThrottle
from bridge_server.server.tokens import load_or_create_token, tokens_equal
from bridge_server.store.history import History

log = logging.getLogger(__name__)
TASKS_CACHE_S = 1.0


@dataclass
class AppState:
    config: ServerConfig
    engine: Engine
    history: History
    journal: Journal
    queue: JobQueue
    hub: Hub = field(default_factory=Hub)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    guard: ConnectionGuard = field(default_factory=ConnectionGuard)
    #: Each sender's share of the daemon's request budget (pacing.py): a flood waits, editors do not.
    pacer: RequestPacer = field(default_factory=RequestPacer)
    #: Every connection's shared-memory table, for the daemon-wide memory budget.
    segment_tables: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    #: The editors' first-run box: model status and the `models pull` child process (model_service.py).
    models: ModelService = field(default_factory=ModelService)
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    #: Changed live from the panel; `default_steps` is what the task table announces and what a submit without
    #: `steps` gets.
    settings: dict[str, Any] = field(default_factory=lambda: {"default_steps": STEPS.default})
    _token: str = ""
    _tasks_cache: tuple[float, Any, list[str]] | None = None
    _people: PeopleBook | None = None

    @property
    def people(self) -> PeopleBook:
        """Named tokens (`ace-bridge token add NAME`), re-read when people.json changes."""
        if self._people is None:
            self._people = PeopleBook(self.config.config_dir)
        return self._people

    def person_for(self, token: str | None) -> str | None:
        """Who a token belongs to: "" for the daemon's own token, the name for a named one, None for neither."""
        if token is None:
            return None
        if tokens_equal(token, self.current_token()):
            return ""
        return self.people.person_for(token)

    def token_for_id(self, tid: str | None) -> tuple[str, str] | None:
        """Protocol 2: (token, person) of the token a hello names by `token_id`; None when none matches."""
        from ace_protocol.auth import token_id

        if not tid:
            return None
        own = self.current_token()
        found = (own, "") if hmac.compare_digest(token_id(own), tid) else None
        self.people.refresh()
        for name, entry in self.people.people.items():  # every entry compared, in constant time each
            if found is None and hmac.compare_digest(token_id(entry["token"]), tid):
                found = (entry["token"], name)
        return found

    def current_token(self) -> str:
        """The token file is re-read on every handshake, so `ace-bridge token --rotate` takes effect at once."""
        if self.config.token:
            return self.config.token
        self._token = load_or_create_token(self.config.config_dir)
        return self._token

    def available_tasks(self) -> list[str]:
        """The tasks whose model files are installed. Asked on every submit, and the engine answers by looking at
        files (a few stat calls each): the answer is kept for a second or until a download through the daemon ends (a flood of submits spent a tenth of the
        event loop on those stat calls, measured with py-spy); a model just pulled shows within that second."""
        now, pull = time.monotonic(), self.models.last  # a new `last` each time a download starts or ends
        cached = self._tasks_cache
        if cached is not None and now - cached[0] < TASKS_CACHE_S and cached[1] is pull:
            return list(cached[2])
        try:
            tasks = list(self.engine.available_tasks())
        except Exception:
            log.exception("engine.available_tasks failed")
            return []
        self._tasks_cache = (now, pull, tasks)
        return list(tasks)

    def missing_message(self, task: str) -> str:
        state = self.engine_state()
        detail = state.get("missing", {}).get(task) if isinstance(state.get("missing"), dict) else None
        return detail or (
            f"task '{task}' needs model files that are not installed; see `ace-bridge models list` and "
            "get them with `ace-bridge models pull`"
        )

    def engine_state(self) -> dict[str, Any]:
        try:
            state = dict(self.engine.state())
        except Exception as exc:
            state = {"state": "error", "message": f"{type(exc).__name__}: {exc}"}
        warnings = [w for w in (self.history.warning, self.journal.warning) if w]
        if warnings:
            state["warnings"] = warnings
        return state

    def task_table(self) -> list[dict[str, Any]]:
        available = set(self.available_tasks())
        table = []
        for name, spec in TASKS.items():
            if name not in available:
                continue
            wire = spec.to_wire()
            for param in wire["params"]:
                if param["name"] == "max_tokens":
                    param["maximum"] = self.config.max_tokens_limit
                elif param["name"] == "steps":
                    param["default"] = self.settings["default_steps"]
            table.append(wire)
        return table

    def memory_in_use(self) -> int:
        """Bytes the budget counts: inputs of waiting jobs (kept encoded) and shared memory of every connection."""
        return self.queue.waiting_input_bytes() + sum(table.held_bytes for table in list(self.segment_tables))

    def memory_refusal(self, more: int, what: str = "this job's inputs") -> str | None:
        """None when `more` bytes fit the daemon's memory budget, else a message that names the budget."""
        budget = self.config.memory_budget_bytes
        used = self.memory_in_use()
        if used + more <= budget:
            return None
        mib = 1024 * 1024
        return (
            f"the daemon's memory budget ({budget / mib:.0f} MiB for waiting jobs' inputs and shared memory "
            f"together) is spent: {used / mib:.1f} MiB in use and {what} need {more / mib:.1f} MiB; wait for "
            "jobs to finish and try again"
        )

    def limits(self) -> dict[str, Any]:
        return {
            "max_frame_bytes": self.config.max_frame_bytes,
            "max_pixels": self.config.max_pixels,
            "max_tokens": self.config.max_tokens_limit,
            "max_queued_per_client": self.config.max_queued_per_client,
        }

    def queue_summary(self) -> list[dict[str, Any]]:
        jobs = self.queue.running_jobs() + self.queue.queued_jobs()
        return [job.summary() for job in jobs]


STATE = web.AppKey("state", AppState)
