"""`create_app(config)`: routes, security middleware, and the daemon's state under one AppKey."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ace_protocol import PROTOCOL_VERSION, __version__
from ace_protocol.tasks import TASKS
from aiohttp import WSCloseCode, web

from .config import ServerConfig
from .engine.base import Engine
from .history import History
from .journal import Journal
from .queue import JobQueue
from .security import FailureThrottle, security_middleware
from .sessions import Hub, websocket_handler
from .tokens import load_or_create_token

log = logging.getLogger(__name__)


@dataclass
class AppState:
    config: ServerConfig
    engine: Engine
    history: History
    journal: Journal
    queue: JobQueue
    hub: Hub = field(default_factory=Hub)
    throttle: FailureThrottle = field(default_factory=FailureThrottle)
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    #: Changed live from the panel; `default_steps` is what the task table announces and what a submit without
    #: `steps` gets.
    settings: dict[str, Any] = field(default_factory=lambda: {"default_steps": 28})
    _token: str = ""

    def current_token(self) -> str:
        """The token file is re-read on every handshake, so `ace-bridge token --rotate` takes effect at once."""
        if self.config.token:
            return self.config.token
        self._token = load_or_create_token(self.config.config_dir)
        return self._token

    def available_tasks(self) -> list[str]:
        try:
            return list(self.engine.available_tasks())
        except Exception:
            log.exception("engine.available_tasks failed")
            return []

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

    def limits(self) -> dict[str, Any]:
        return {
            "max_frame_bytes": self.config.max_frame_bytes,
            "max_pixels": self.config.max_pixels,
            "max_tokens": self.config.max_tokens_limit,
            "max_queued_per_client": self.config.max_queued_per_client,
        }

    def queue_summary(self) -> list[dict[str, Any]]:
        jobs = ([self.queue.running] if self.queue.running else []) + self.queue.queued_jobs()
        return [job.summary() for job in jobs]


STATE = web.AppKey("state", AppState)


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine = state.engine_state()
    return web.json_response(
        {
            "ok": True,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "engine": engine.get("state", "unknown"),
            "queue": len(state.queue.queued_jobs()) + (1 if state.queue.running else 0),
            "paused": state.config.gate.paused,
        }
    )


def create_app(config: ServerConfig) -> web.Application:
    """A new daemon app. The engine is created by `config.engine_factory` when the app starts."""
    app = web.Application(
        middlewares=[security_middleware(config.allowed_hosts)],
        client_max_size=1024 * 1024,  # HTTP bodies are small JSON; pixels travel on the WebSocket
    )
    app.router.add_get("/v1/ws", websocket_handler)
    app.router.add_get("/v1/health", health)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if config.engine_factory is None:
            raise RuntimeError("ServerConfig.engine_factory is required")
        engine = await asyncio.to_thread(config.engine_factory)
        history = History(config.history_dir)
        await asyncio.to_thread(history.open)
        journal = Journal(config.journal_path)
        queue = JobQueue(config, engine, history, journal)
        await asyncio.to_thread(queue.restore)
        state = AppState(config, engine, history, journal, queue)
        queue.listeners.append(state.hub.deliver)
        queue.wants_previews = state.hub.wants_previews
        app[STATE] = state
        if not config.token:
            state.current_token()
        queue.start()
        trimmer = asyncio.get_running_loop().create_task(state.hub.trim_segment_pools())
        try:
            yield
        finally:
            trimmer.cancel()
            await queue.stop()
            state.hub.close_segment_pools()

    async def close_sockets(app: web.Application) -> None:
        state = app.get(STATE)
        if state is None:
            return
        for ws in list(state.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    try:
        from .panel.routes import setup_panel  # the control panel is optional at import time
    except ImportError:
        setup_panel = None
    if setup_panel is not None:
        setup_panel(app, config)
    return app
