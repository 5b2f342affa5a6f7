"""The control panel: a static page, a small JSON API and one WebSocket of live updates, all under `/panel/`.

Access: a process that can read the token file asks `POST /panel/api/code` for a one-time code, proving the token
in two requests (`{token_id, nonce}`, then `{challenge, proof}`: the daemon proves it first, server/tokens.py
`HttpChallenges`; an `Authorization: Bearer` header is still taken on loopback or over TLS), and opens
`/panel/?code=...`. The daemon trades the code (single use, short expiry) for an HttpOnly,
SameSite=Strict session cookie and redirects to the clean URL. Every other panel endpoint needs that cookie;
state-changing ones take only `application/json` bodies. The app's security middleware has already refused
foreign Hosts, foreign Origins, `Sec-Fetch-Site: cross-site/same-site` and form content types before we get here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ace_protocol.errors import ProtocolError
from ace_protocol.messages import Failed, Result
from ace_protocol.tasks import MEMORY_MODES as TABLE_MEMORY_MODES
from ace_protocol.tasks import STEPS
from aiohttp import ChainMapProxy, WSCloseCode, WSMsgType, web

from bridge_server.config import ServerConfig
from bridge_server.engine.tiers import TIER_NAMES
from bridge_server.server.offers import OfferRefused, check_target, editor_title, target_view
from bridge_server.server.people import usage
from bridge_server.server.sessions import send_offers
from bridge_server.server.state import STATE, AppState
from bridge_server.server.tokens import HttpChallenges, bearer_token, rotate_token, tokens_equal
from bridge_server.store.history import BEFORE_SUFFIX, ENTRY_RE, HistoryUnavailable

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "ace_panel"
CODE_TTL_S = 60.0
SESSION_TTL_S = 12 * 3600.0
PAGE_MAX = 200
PUSH_INTERVAL_S = 0.1  # coalesced pushes: at most ~10 per second, whatever the queue emits
ENGINE_POLL_S = 1.0
MISSING_COMMAND = "ace-bridge models pull --yes"
FAILURES_KEPT = 20
#: What a person does about a failed job, by its error code.
FAILURE_ADVICE = {
    "out_of_memory": "The GPU ran out of memory: select a smaller area, lower max tokens, or pick an offload "
    "memory mode under Settings, then send the job again.",
    "model_missing": f"Model files are missing: run `{MISSING_COMMAND}` (add --fft for instruct), then send it again.",
    "bad_request": "The job's inputs or parameters were refused (the message says which): fix them in the editor "
    "and send it again.",
    "too_large": "The image is larger than this daemon accepts: select a smaller area or scale the image down.",
    "interrupted": "The daemon stopped while the job ran: send it again.",
    "queue_full": "The queue is full: wait for it to drain, then send the job again.",
    "rate_limited": "Too many jobs at once from this editor: wait a moment and send it again.",
    "unknown_task": "This daemon does not offer that task (its model files may be missing): see the Engine card.",
    "internal": "Something went wrong inside the daemon: send the job again; if it fails again, the daemon's log "
    "(ace-bridge serve) has the details.",
}
#: What to do when the engine cannot run the model here (EngineSetupError kinds and preflight problems).
ENGINE_ADVICE = {
    "no_gpu": "This machine has no GPU that can run the real ACE++ model (it needs about 34 GB of GPU memory): run "
    "the daemon on a machine with a suitable NVIDIA GPU, or a smaller tier (fp8 / nf4, see docs/gpu.md).",
    "unsupported_gpu": "This GPU cannot run the model's kernels: use a supported NVIDIA GPU (see docs/gpu.md).",
    "too_little_ram": "The computer has too little memory for this tier: close other programs or choose a smaller "
    "tier (serve --tier).",
    "too_little_vram": "No tier fits this GPU's free memory: close other GPU programs, or pick a quantised tier "
    "(serve --tier) or an offload memory mode under Settings.",
    "wrong_file": "A model file is not what its name says: run `ace-bridge models verify` and pull it again.",
}


@dataclass
class PanelState:
    codes: dict[str, float] = field(default_factory=dict)  # one-time code -> expiry (monotonic)
    sessions: dict[str, float] = field(default_factory=dict)  # cookie value -> expiry (monotonic)
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: set[str] = field(default_factory=set)
    history_version: int = 0
    pushes: int = 0  # frames sent, for tests and the bench
    push_times: deque[float] = field(default_factory=lambda: deque(maxlen=200))  # monotonic, for the rate test
    thumbs: dict[str, bytes] = field(default_factory=dict)
    failures: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=FAILURES_KEPT))  # newest last
    last_engine: str = ""
    panels: list[dict[str, Any]] = field(default_factory=list)  # what connected panel pages said in `hello`
    agents_seen: list[str] = field(default_factory=list)  # every page that said hello (bounded; for tests)
    challenges: HttpChallenges = field(default_factory=HttpChallenges)  # `ace-bridge panel` proving the token

    def mark(self, *parts: str) -> None:
        self.dirty.update(parts)
        self.wake.set()

    def new_code(self) -> str:
        now = time.monotonic()
        self.codes = {c: t for c, t in self.codes.items() if t > now}
        code = secrets.token_urlsafe(24)
        self.codes[code] = now + CODE_TTL_S
        return code

    def redeem(self, code: str) -> str | None:
        expiry = self.codes.pop(code, None)  # single use: gone whether or not it was still valid
        if expiry is None or expiry < time.monotonic():
            return None
        now = time.monotonic()
        self.sessions = {s: t for s, t in self.sessions.items() if t > now}
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_TTL_S
        return session

    def valid_session(self, value: str | None) -> bool:
        if not value:
            return False
        for known, expiry in self.sessions.items():
            if tokens_equal(value, known) and expiry > time.monotonic():
                return True
        return False


PANEL = web.AppKey("panel", PanelState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _app_state(request: web.Request) -> AppState:
    return request.config_dict[STATE]


def _need_session(handler: Handler) -> Handler:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not request.config_dict[PANEL].valid_session(request.cookies.get(COOKIE)):
            return web.json_response(
                {"error": "unauthorized", "message": "open the panel with `ace-bridge panel`"}, status=401
            )
        return await handler(request)

    return wrapped


def _json_action(handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]) -> Handler:
    """Cookie + `application/json` body (a cross-site form cannot send that type without a CORS preflight)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":
            return web.json_response({"error": "unsupported_media_type", "message": "JSON bodies only"}, status=415)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "bad_request", "message": "body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "bad_request", "message": "body must be a JSON object"}, status=400)
        return await handler(request, body)

    return _need_session(wrapped)


# ---------------------------------------------------------------------------------------------------- snapshots


def engine_view(state: Any) -> dict[str, Any]:
    engine = state.engine_state()
    view = dict(engine)
    view["paused"] = state.config.gate.paused
    if engine.get("state") == "missing":
        view["command"] = MISSING_COMMAND
    if engine.get("state") == "error" or engine.get("error"):
        # Not healthy: say so, and what a person can do about it.
        kind = str(engine.get("error_kind") or "")
        view["usable"] = False
        view["advice"] = ENGINE_ADVICE.get(kind, "The model cannot run here: see the error above and the daemon's log.")
    view["token_fixed"] = bool(state.config.token)
    view["settings"] = settings_view(state)
    view["people"] = usage(state)  # per person (named tokens): queued, running, finished and not yet collected
    return view


MEMORY_MODES = tuple(TABLE_MEMORY_MODES)  # the task table's; the engine and `serve --memory-mode` use the same


def settings_view(state: Any) -> dict[str, Any]:
    engine = state.engine_state()
    return {
        "default_steps": state.settings["default_steps"],
        "steps_range": [STEPS.minimum, STEPS.maximum],
        "memory_mode": engine.get("memory_mode_requested") or engine.get("memory_mode") or "auto",
        "memory_modes": list(MEMORY_MODES),
        "tier": engine.get("tier_requested") or "auto",  # the override; the tier running is engine["tier"]
        "tiers": ["auto", *TIER_NAMES] if hasattr(state.engine, "set_tier") else [],
    }


def clients_view(state: Any) -> list[dict[str, Any]]:
    return [s.summary() for s in state.hub.connected()]


def targets_view(state: Any) -> list[dict[str, Any]]:
    """Editors a result can be sent to: every plug-in that said it takes offers, connected or not (a short-lived
    one like GIMP's takes it at its next run; for a disconnected Krita the panel says so), and connected older
    plug-ins (listed so the panel can say why they cannot)."""
    views = [target_view(s) for s in state.hub.sessions.values()]
    return [v for v in views if v["mode"] or (v["connected"] and v["editor"] not in ("", "cli"))]


def queue_view(state: Any) -> list[dict[str, Any]]:
    names = {cid: s.client_name for cid, s in state.hub.sessions.items()}
    rows = []
    for job in state.queue.running_jobs() + state.queue.queued_jobs():
        row = job.summary()
        row["client_name"] = names.get(job.client_id, "")
        rows.append(row)
    return rows


def entry_view(meta: dict[str, Any]) -> dict[str, Any]:
    prov = meta.get("provenance") or {}
    params = prov.get("params") or {}
    return {
        "entry": meta["entry"],
        "task": prov.get("task", ""),
        "prompt": str(prov.get("prompt", ""))[:500],
        "seed": prov.get("seed"),
        "finished": meta.get("finished", prov.get("finished")),
        "duration_s": prov.get("duration_s"),
        "width": meta.get("width"),
        "height": meta.get("height"),
        "editor": prov.get("editor", ""),
        "label": meta.get("label", ""),
        "params": params,
        "before": bool(meta.get("before")),
    }


def failure_view(job: Any, message: Failed) -> dict[str, Any]:
    return {
        "job_id": message.job_id or getattr(job, "id", ""),
        "task": getattr(job, "task", ""),
        "prompt": str(getattr(job, "prompt", ""))[:200],
        "editor": getattr(job, "editor", ""),
        "code": message.code,
        "message": message.message,
        "at": time.time(),
        "advice": FAILURE_ADVICE.get(message.code, FAILURE_ADVICE["internal"]),
    }


def history_total(state: Any) -> int:
    return state.history.entries(offset=0, limit=0)[0]


def history_page(state: Any, offset: int, limit: int) -> dict[str, Any]:
    total, metas = state.history.entries(offset=offset, limit=limit)
    return {"total": total, "offset": offset, "limit": limit, "entries": [entry_view(m) for m in metas]}


# ---------------------------------------------------------------------------------------------------- handlers


async def get_code(request: web.Request) -> web.Response:
    """A one-time code for whoever can read the token file (the `ace-bridge panel` command)."""
    state = _app_state(request)
    given = bearer_token(request.headers.get("Authorization"))
    transport = request.transport
    key = state.throttle.key_for(
        request.remote or "?",
        transport.get_extra_info("peername") if transport else None,
        transport.get_extra_info("sockname") if transport else None,
    )
    if not state.throttle.admit(key):  # decided before the token is looked at (server/security.py)
        return web.json_response(
            {"error": "rate_limited", "message": "too many wrong tokens; wait a minute"}, status=429
        )
    if given is None:
        return await _code_by_proof(request, state, key)
    if not tokens_equal(given, state.current_token()):
        await asyncio.sleep(state.throttle.failed(key))
        return web.json_response({"error": "unauthorized", "message": "wrong or missing token"}, status=401)
    if request.content_type not in ("application/json", "application/octet-stream") and request.can_read_body:
        return web.json_response({"error": "unsupported_media_type", "message": "JSON bodies only"}, status=415)
    code = request.config_dict[PANEL].new_code()
    return web.json_response({"code": code, "path": f"/panel/?code={code}", "expires_s": CODE_TTL_S})


async def _code_by_proof(request: web.Request, state: AppState, key: str) -> web.Response:
    """The code without the token travelling: `{token_id, nonce}` gets the daemon's challenge and proof;
    `{challenge, proof}` gets the code when the client's proof is right (the daemon's own token only)."""
    from ace_protocol.auth import token_id

    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return web.json_response({"error": "bad_request", "message": "the body must be a JSON object"}, status=400)
    challenges = request.config_dict[PANEL].challenges
    if isinstance(body.get("token_id"), str) and isinstance(body.get("nonce"), str) and len(body["nonce"]) <= 64:
        own = state.current_token()
        # Counted as a wrong token when issued (the challenge tells a holder of a candidate whether it is right),
        # forgiven when the proof is right: the same rule as the WebSocket handshake.
        state.throttle.failed(key)
        named = own if tokens_equal(body["token_id"], token_id(own)) else None
        return web.json_response(challenges.issue(named, body["nonce"]))
    if isinstance(body.get("challenge"), str) and isinstance(body.get("proof"), str):
        if not challenges.redeem(body["challenge"], body["proof"]):
            return web.json_response({"error": "unauthorized", "message": "wrong or missing token"}, status=401)
        state.throttle.succeeded(key)
        code = request.config_dict[PANEL].new_code()
        return web.json_response({"code": code, "path": f"/panel/?code={code}", "expires_s": CODE_TTL_S})
    return web.json_response(
        {
            "error": "unauthorized",
            "message": "prove the token: send {token_id, nonce}, then {challenge, proof} (docs/protocol.md §4)",
        },
        status=401,
    )


async def index(request: web.Request) -> web.StreamResponse:
    panel = request.config_dict[PANEL]
    code = request.query.get("code")
    if code is not None:
        session = panel.redeem(code)
        if session is None:
            return web.Response(
                status=403,
                content_type="text/html",
                text=_NO_ACCESS.format(why="This panel link was already used or has expired."),
            )
        response = web.HTTPSeeOther("/panel/")
        response.set_cookie(
            COOKIE,
            session,
            path="/panel",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            max_age=int(SESSION_TTL_S),
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        raise response
    if not panel.valid_session(request.cookies.get(COOKIE)):
        return web.Response(
            status=401, content_type="text/html", text=_NO_ACCESS.format(why="This browser has no panel session.")
        )
    return _static_file("index.html")


def _static_file(name: str) -> web.StreamResponse:
    response = web.FileResponse(STATIC / name)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
    )
    return response


@_need_session
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ("panel.css", "panel.js"):
        raise web.HTTPNotFound()
    return _static_file(name)


@_need_session
async def api_state(request: web.Request) -> web.Response:
    return web.json_response(_snapshot(request.config_dict, 0, 60))


@_need_session
async def api_history(request: web.Request) -> web.Response:
    try:
        offset = max(0, int(request.query.get("offset", "0")))
        limit = min(PAGE_MAX, max(1, int(request.query.get("limit", "60"))))
    except ValueError:
        return web.json_response({"error": "bad_request", "message": "offset and limit are integers"}, status=400)
    page = history_page(_app_state(request), offset, limit)
    page["version"] = request.config_dict[PANEL].history_version
    return web.json_response(page)


def _entry(request: web.Request) -> str:
    entry = request.match_info["entry"]
    if not ENTRY_RE.match(entry) or _app_state(request).history.meta(entry) is None:
        raise web.HTTPNotFound()
    return entry


@_need_session
async def api_thumb(request: web.Request) -> web.Response:
    entry = _entry(request)
    panel = request.config_dict[PANEL]
    data = panel.thumbs.get(entry)
    if data is None:
        try:
            data = await asyncio.to_thread(_app_state(request).history.thumbnail, entry, 192)
        except HistoryUnavailable:
            raise web.HTTPNotFound() from None
        if len(panel.thumbs) > 2000:
            panel.thumbs.clear()
        panel.thumbs[entry] = data
    return web.Response(body=data, content_type="image/webp", headers={"Cache-Control": "private, max-age=86400"})


@_need_session
async def api_image(request: web.Request) -> web.StreamResponse:
    entry = _entry(request)
    try:
        path = _app_state(request).history.path_for(entry, ".png")
    except KeyError:
        raise web.HTTPNotFound() from None
    if not path.is_file():
        raise web.HTTPNotFound()
    response = web.FileResponse(path)
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


@_need_session
async def api_before(request: web.Request) -> web.StreamResponse:
    """The input the result was made from (small), for the before/after slider."""
    entry = _entry(request)
    try:
        path = _app_state(request).history.path_for(entry, BEFORE_SUFFIX)
    except KeyError:
        raise web.HTTPNotFound() from None
    if not path.is_file():
        raise web.HTTPNotFound()
    response = web.FileResponse(path)
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response


@_need_session
async def api_meta(request: web.Request) -> web.Response:
    entry = _entry(request)
    return web.json_response(_app_state(request).history.meta(entry))


@_json_action
async def api_cancel(request: web.Request, body: dict[str, Any]) -> web.Response:
    job_id = body.get("job_id")
    if not isinstance(job_id, str):
        return web.json_response({"error": "bad_request", "message": "job_id is required"}, status=400)
    ok = _app_state(request).queue.cancel(job_id)
    request.config_dict[PANEL].mark("queue")
    return web.json_response({"ok": ok})


@_json_action
async def api_pause(request: web.Request, body: dict[str, Any]) -> web.Response:
    paused = body.get("paused")
    if not isinstance(paused, bool):
        return web.json_response({"error": "bad_request", "message": "paused must be true or false"}, status=400)
    gate = _app_state(request).config.gate
    if paused:
        gate.pause()
    else:
        gate.resume()
    request.config_dict[PANEL].mark("engine", "queue")
    return web.json_response({"ok": True, "paused": gate.paused})


@_json_action
async def api_delete(request: web.Request, body: dict[str, Any]) -> web.Response:
    entry = body.get("entry")
    if not isinstance(entry, str) or not ENTRY_RE.match(entry):
        return web.json_response({"error": "bad_request", "message": "entry is required"}, status=400)
    ok = await asyncio.to_thread(_app_state(request).history.delete, entry)
    panel = request.config_dict[PANEL]
    panel.thumbs.pop(entry, None)
    if ok:
        panel.history_version += 1
        panel.mark("history")
    return web.json_response({"ok": ok})


@_json_action
async def api_settings(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Live settings: `default_steps` (the table's steps range) for jobs that do not say, `memory_mode` and
    `tier` (the memory tier override, "auto" to let the daemon choose; both reload at the next job)."""
    state = _app_state(request)
    steps = body.get("default_steps")
    mode = body.get("memory_mode")
    tier = body.get("tier")
    set_tier = getattr(state.engine, "set_tier", None)
    if tier is not None and (tier not in ("auto", *TIER_NAMES) or set_tier is None):
        return web.json_response(
            {"error": "bad_request", "message": f"tier must be one of auto, {', '.join(TIER_NAMES)}"}, status=400
        )
    if steps is not None:
        try:
            steps = STEPS.validate(steps)
        except ProtocolError as exc:
            return web.json_response({"error": "bad_request", "message": f"default_steps: {exc.message}"}, status=400)
    setter = getattr(state.engine, "set_memory_mode", None)
    if mode is not None and (mode not in MEMORY_MODES or setter is None):
        return web.json_response(
            {"error": "bad_request", "message": f"memory_mode must be one of {', '.join(MEMORY_MODES)}"}, status=400
        )
    if steps is not None:
        state.settings["default_steps"] = steps
    if mode is not None and setter is not None:
        set_mode = setter
        await state.queue.on_engine_thread(lambda: set_mode(mode))
    current = state.engine_state().get("tier_requested")
    if tier is not None and set_tier is not None and tier != current:
        apply_tier = set_tier
        await state.queue.on_engine_thread(lambda: apply_tier(tier))
    request.config_dict[PANEL].mark("engine")
    return web.json_response({"ok": True, "settings": settings_view(state)})


@_json_action
async def api_send(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Send a history result to an editor (`client_id`), into one of its open documents (`document`, optional)."""
    state = _app_state(request)
    entry, client_id, document = body.get("entry"), body.get("client_id"), body.get("document", "")
    if not isinstance(entry, str) or not ENTRY_RE.match(entry) or state.history.meta(entry) is None:
        return web.json_response({"error": "bad_request", "message": "no such result in history"}, status=404)
    if not isinstance(client_id, str) or not isinstance(document, str) or len(document) > 256:
        return web.json_response(
            {"error": "bad_request", "message": "client_id (and an optional document name) are required"}, status=400
        )
    session = state.hub.sessions.get(client_id)
    if session is None:
        return web.json_response(
            {"error": "not_connected", "message": "That editor is not known to the daemon: open it, then try again."},
            status=409,
        )
    try:
        check_target(session)
    except OfferRefused as exc:
        return web.json_response({"error": exc.code, "message": str(exc)}, status=exc.status)
    connection = session.connection
    record = state.hub.offers.add(client_id, entry, session.editor, document, connected=connection is not None)
    if connection is not None:
        await send_offers(state, connection, client_id, record.offer_id)
        message = f"Sent to {editor_title(session)}: it inserts it as a new layer."
    else:
        message = (
            f"Kept for {editor_title(session)}: it inserts it at its next Fetch Finished Results (Filters ▸ ACE++)."
        )
    request.config_dict[PANEL].mark("clients")
    return web.json_response({"ok": True, "offer": record.view(), "message": message})


@_json_action
async def api_rotate(request: web.Request, body: dict[str, Any]) -> web.Response:
    state = _app_state(request)
    if state.config.token:
        return web.json_response(
            {"ok": False, "message": "the daemon was started with a fixed token; restart it without one to rotate"},
            status=409,
        )
    await asyncio.to_thread(rotate_token, state.config.config_dir)
    return web.json_response(
        {
            "ok": True,
            "message": "token rotated: connected editors stay connected; new "
            "connections need the new token (plugins read it from the token file)",
        }
    )


async def panel_ws(request: web.Request) -> web.StreamResponse:
    panel = request.config_dict[PANEL]
    if not panel.valid_session(request.cookies.get(COOKIE)):
        return web.Response(status=401, text="unauthorized\n")
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=64 * 1024)
    await ws.prepare(request)
    panel.sockets.add(ws)
    info: dict[str, Any] = {}
    try:
        await ws.send_str(json.dumps({"type": "snapshot", **_snapshot(request.config_dict, None, 0)}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("type") == "hello":
                info = {"agent": str(data.get("agent", ""))[:300], "since": time.time()}
                panel.panels.append(info)
                panel.agents_seen = [*panel.agents_seen[-19:], info["agent"]]
                log.info("panel page connected: %s", info["agent"])
    finally:
        panel.sockets.discard(ws)
        if info in panel.panels:
            panel.panels.remove(info)
    return ws


def _snapshot(app: ChainMapProxy | web.Application, offset: int | None, limit: int) -> dict[str, Any]:
    state = app[STATE]
    panel = app[PANEL]
    snap: dict[str, Any] = {"engine": engine_view(state), "clients": clients_view(state), "queue": queue_view(state)}
    snap["targets"], snap["offers"] = targets_view(state), state.hub.offers.views()
    if offset is not None:
        snap["history"] = history_page(state, offset, limit)
    else:
        snap["history"] = {"total": history_total(state)}
    snap["history"]["version"] = panel.history_version
    snap["failures"] = list(reversed(panel.failures))
    return snap


# ---------------------------------------------------------------------------------------------------- pushing


async def _pusher(app: web.Application) -> None:
    """Send what changed to every panel page, coalescing bursts to at most one frame per PUSH_INTERVAL_S."""

    panel = app[PANEL]
    while True:
        await panel.wake.wait()
        panel.wake.clear()
        parts, panel.dirty = panel.dirty, set()
        if not panel.sockets or not parts:
            continue
        state = app[STATE]
        frame: dict[str, Any] = {"type": "update"}
        if "engine" in parts:
            frame["engine"] = engine_view(state)
        if "clients" in parts:
            frame["clients"] = clients_view(state)
            frame["targets"], frame["offers"] = targets_view(state), state.hub.offers.views()
        if "queue" in parts:
            frame["queue"] = queue_view(state)
        if "history" in parts:
            frame["history"] = {"total": history_total(state), "version": panel.history_version}
        if "failures" in parts:
            frame["failures"] = list(reversed(panel.failures))
        text = json.dumps(frame)
        for ws in list(panel.sockets):
            if ws.closed:
                continue
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pass
        panel.pushes += 1
        panel.push_times.append(time.monotonic())
        await asyncio.sleep(PUSH_INTERVAL_S)


async def _engine_watch(app: web.Application) -> None:
    """The engine has no change callback: compare its state once a second while a panel page is open."""

    panel = app[PANEL]
    while True:
        await asyncio.sleep(ENGINE_POLL_S)
        if not panel.sockets:
            continue
        state = app.get(STATE)
        if state is None:
            continue
        text = json.dumps(engine_view(state), sort_keys=True, default=str)
        if text != panel.last_engine:
            panel.last_engine = text
            panel.mark("engine")


def setup_panel(app: web.Application, config: ServerConfig) -> None:
    """Mount the panel as a sub-app under /panel/; hook into the queue and hub once the daemon's state exists.

    The daemon's security middleware covers the sub-app too (aiohttp runs the parent's middlewares for it), and
    its handlers reach the daemon's state through `request.config_dict`, which also looks in the parent app.
    """
    panel_state = PanelState()
    app[PANEL] = panel_state  # the daemon app carries it too, so tests and `_pusher` find it there
    panel_app = web.Application()
    panel_app[PANEL] = panel_state
    panel_app.router.add_post("/api/code", get_code)
    panel_app.router.add_get("/", index)
    panel_app.router.add_get("/static/{name}", static)
    panel_app.router.add_get("/api/state", api_state)
    panel_app.router.add_get("/api/history", api_history)
    panel_app.router.add_get("/api/thumb/{entry}", api_thumb)
    panel_app.router.add_get("/api/image/{entry}", api_image)
    panel_app.router.add_get("/api/meta/{entry}", api_meta)
    panel_app.router.add_get("/api/before/{entry}", api_before)
    panel_app.router.add_post("/api/cancel", api_cancel)
    panel_app.router.add_post("/api/pause", api_pause)
    panel_app.router.add_post("/api/history/delete", api_delete)
    panel_app.router.add_post("/api/token/rotate", api_rotate)
    panel_app.router.add_post("/api/settings", api_settings)
    panel_app.router.add_post("/api/send", api_send)
    panel_app.router.add_get("/ws", panel_ws)

    async def lifecycle(_panel_app: web.Application) -> AsyncIterator[None]:

        panel = app[PANEL]
        panel.wake = asyncio.Event()  # bound to the running loop
        state = app[STATE]

        def on_job(job: Any, message: Any) -> None:
            if isinstance(message, Result):
                panel.history_version += 1
                panel.mark("queue", "history")
            elif isinstance(message, Failed):
                panel.failures.append(failure_view(job, message))
                panel.mark("queue", "failures")
            else:
                panel.mark("queue")

        def on_clients() -> None:
            panel.mark("clients", "queue")

        state.queue.listeners.append(on_job)
        state.hub.on_change.append(on_clients)
        tasks = [
            asyncio.create_task(_pusher(app), name="panel-pusher"),
            asyncio.create_task(_engine_watch(app), name="panel-engine-watch"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            if on_job in state.queue.listeners:
                state.queue.listeners.remove(on_job)
            if on_clients in state.hub.on_change:
                state.hub.on_change.remove(on_clients)

    async def close_sockets(_panel_app: web.Application) -> None:
        for ws in list(panel_state.sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon shutting down")

    panel_app.cleanup_ctx.append(lifecycle)
    panel_app.on_shutdown.append(close_sockets)
    app.router.add_get("/panel", _redirect_slash)  # before the sub-app, so the bare prefix is answered here
    app.add_subapp("/panel", panel_app)


async def _redirect_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/panel/" + (f"?{request.query_string}" if request.query_string else ""))


_NO_ACCESS = """<!doctype html><html><head><meta charset="utf-8"><title>ACE Bridge panel</title></head>
<body style="font-family: sans-serif; margin: 3em; max-width: 40em">
<h1>ACE Bridge control panel</h1><p>{why}</p>
<p>Open the panel with <code>ace-bridge panel</code> (or <code>ace-bridge panel --browser</code>); it asks the daemon
for a fresh one-time link.</p></body></html>
"""
