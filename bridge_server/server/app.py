"""`create_app(config)`: routes, security middleware, and the daemon's state under one AppKey."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ace_protocol import PROTOCOL_VERSION, __version__
from aiohttp import WSCloseCode, web

from bridge_server.config import ServerConfig
from bridge_server.jobs import durability
from bridge_server.jobs.journal import Journal
from bridge_server.jobs.queue import JobQueue
from bridge_server.server.pacing import RequestPacer
from bridge_server.server.panel.routes import setup_panel
from bridge_server.server.people import enforce_revocations
from bridge_server.server.security import GUARD, ConnectionGuard, security_middleware
from bridge_server.server.sessions import websocket_handler
from bridge_server.server.state import STATE, AppState
from bridge_server.store.history import History

log = logging.getLogger(__name__)


class BridgeRunner(web.AppRunner):
    """aiohttp's runner with the daemon's connection guard attached to its server (deadlines and a cap for
    connections that have not proved the token yet) and a short keep-alive. `serve` and the tests use it."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", 15.0)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        self.app[GUARD].attach(server)
        return server


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine = state.engine_state()
    return web.json_response(
        {
            "ok": True,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "engine": engine.get("state", "unknown"),
            "queue": len(state.queue.queued_jobs()) + len(state.queue.running_jobs()),
            "paused": state.config.gate.paused,
        }
    )


def create_app(config: ServerConfig) -> web.Application:
    """A new daemon app. The engine is created by `config.engine_factory` when the app starts."""
    guard = ConnectionGuard()
    app = web.Application(
        middlewares=[security_middleware(config.allowed_hosts, guard, remote=not config.is_loopback)],
        client_max_size=1024 * 1024,  # HTTP bodies are small JSON; pixels travel on the WebSocket
    )
    app[GUARD] = guard
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
        state = AppState(
            config, engine, history, journal, queue, guard=guard, pacer=RequestPacer(config.request_budget_per_s)
        )
        guard.early_refusal = state.throttle.refusing  # a throttled principal's flood is closed at accept
        queue.listeners.append(state.hub.deliver)
        queue.wants_previews = state.hub.wants_previews
        app[STATE] = state
        if not config.token:
            state.current_token()
        queue.start()
        trimmer = asyncio.get_running_loop().create_task(state.hub.trim_segment_pools())
        writer = asyncio.get_running_loop().create_task(
            durability.keep_writing(
                history, journal, queue.jobs, config.extra.get("retry_writes_s", durability.RETRY_S)
            )
        )
        revocations = asyncio.get_running_loop().create_task(enforce_revocations(state))
        try:
            yield
        finally:
            trimmer.cancel()
            writer.cancel()
            revocations.cancel()
            await queue.stop()  # its journal's close writes the lines the disk refused, if it now allows
            await asyncio.to_thread(durability.save_held_results, history, list(queue.jobs.values()))
            await state.models.close()  # a running model download stops with the daemon
            state.hub.close_segment_pools()

    async def close_sockets(app: web.Application) -> None:
        state = app.get(STATE)
        if state is None:
            return
        for ws in list(state.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon shutting down")

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    setup_panel(app, config)
    return app
