"""One connected client: handshake, dispatch, resume.

A `ClientSession` belongs to a `client_id` and outlives connections (and, through the journal, restarts); a
`Connection` is one WebSocket. The receive loop only decodes and dispatches; a separate task sends, so a slow
client never holds up the queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from typing import Any

import msgpack
from ace_protocol import __version__
from ace_protocol.auth import AUTH_VERSION, new_nonce, proof_matches
from ace_protocol.auth import proof as auth_proof
from ace_protocol.codec import decode_client_message, decode_map
from ace_protocol.errors import ErrorCode, ProtocolError, bad_request
from ace_protocol.messages import (
    Accepted,
    Ack,
    Alloc,
    Allocated,
    Cancel,
    Challenge,
    Documents,
    Error,
    Failed,
    Hello,
    Message,
    OfferDone,
    Prove,
    Release,
    ShmReady,
    StatusReply,
    StatusRequest,
    Submit,
    Welcome,
)
from ace_protocol.tasks import TASKS
from aiohttp import WSCloseCode, WSMsgType, web

from bridge_server.imaging.codecs import check_encoded, to_array
from bridge_server.jobs.job import Job, JobInputs
from bridge_server.jobs.queue import new_job_id
from bridge_server.server.hub import BridgeWebSocket, ClientSession, Connection
from bridge_server.server.model_service import MODEL_MESSAGES
from bridge_server.server.offers import OFFER_MODES, offer_message
from bridge_server.server.shared_memory import ConnectionSegments
from bridge_server.server.state import STATE, AppState

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 15.0
PREAUTH_FRAME_BYTES = 64 * 1024  # a hello is a few hundred bytes


async def websocket_handler(request: web.Request) -> web.StreamResponse:

    state: AppState = request.app[STATE]
    config = state.config
    # Before the token check a frame may be only PREAUTH_FRAME_BYTES: nothing big is read or decoded for a peer
    # that has proved nothing (raised to max_frame_bytes once hello succeeds).
    ws = BridgeWebSocket(max_msg_size=min(PREAUTH_FRAME_BYTES, config.max_frame_bytes), heartbeat=30.0, compress=False)
    await ws.prepare(request)
    peer = request.remote or "?"
    state.sockets.add(ws)
    segments = ConnectionSegments(
        enabled=config.shared_memory and _is_loopback(peer),
        max_bytes=config.shared_memory_max_bytes,
        max_segment_bytes=config.max_frame_bytes,
    )
    segments.daemon_room = lambda size: state.memory_refusal(size, "this segment")  # type: ignore[attr-defined]
    state.segment_tables.add(segments)
    connection = Connection(ws, peer, segments, transport=request.transport, stall_s=config.send_stall_s)
    connection.sender = asyncio.get_running_loop().create_task(connection.run_sender())
    session: ClientSession | None = None
    try:
        session = await _handshake(state, request, connection)
        if session is None:
            return ws
        await _receive_loop(state, session, connection)
    finally:
        if connection.replay is not None:
            connection.replay.cancel()
        connection.close_positions()
        connection.outbox.put_nowait(None)
        if connection.sender is not None:
            try:
                await asyncio.wait_for(connection.sender, timeout=10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                connection.sender.cancel()
        if session is not None and session.connection is connection:
            session.connection = None
            state.hub.forget_idle(state.config.max_idle_sessions, state.queue.client_ids)
            state.hub.changed()
        if not ws.closed:
            await ws.close()
        segments.close()
    return ws


def _is_loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


async def _refuse(connection: Connection, code: ErrorCode, message: str, close_code: int) -> None:
    connection.send(Error(code=code.value, message=message))
    connection.outbox.put_nowait(None)
    if connection.sender is not None:
        await connection.sender
    await connection.ws.close(code=close_code, message=code.value.encode())


async def _handshake(state: AppState, request: web.Request, connection: Connection) -> ClientSession | None:
    ws = connection.ws
    try:
        first = await ws.receive(timeout=HELLO_TIMEOUT_S)
    except asyncio.TimeoutError:
        await _refuse(connection, ErrorCode.BAD_REQUEST, "no hello within 15 s", WSCloseCode.POLICY_VIOLATION)
        return None
    if first.type != WSMsgType.BINARY:
        if first.type in (WSMsgType.TEXT,):
            await _refuse(
                connection, ErrorCode.BAD_REQUEST, "frames must be binary msgpack", WSCloseCode.UNSUPPORTED_DATA
            )
        return None
    try:
        hello = decode_client_message(first.data, max_frame_bytes=state.config.max_frame_bytes)
    except ProtocolError as exc:
        await _refuse(connection, exc.code, exc.message, WSCloseCode.POLICY_VIOLATION)
        return None
    if not isinstance(hello, Hello):
        await _refuse(
            connection, ErrorCode.BAD_REQUEST, f"send 'hello' first, not '{hello.TYPE}'", WSCloseCode.POLICY_VIOLATION
        )
        return None
    if AUTH_VERSION not in hello.protocol_versions or hello.nonce is None:
        # Protocol 1 sent the token itself (in hello or an Authorization header): a plugin that still does would
        # hand it to whatever program took the port while the daemon was down. It is never looked at here, and
        # the plugin gets one answer it can show (never a hang).
        await _refuse(
            connection,
            ErrorCode.UNSUPPORTED_VERSION,
            f"update the plugin: this daemon needs protocol {AUTH_VERSION}, where the token is proved, never sent "
            f"(the client offered protocol {hello.protocol_versions}). The token it sent was not used; install "
            "the plugin from this ACE Bridge version",
            WSCloseCode.POLICY_VIOLATION,
        )
        return None
    transport = request.transport
    key = state.throttle.key_for(
        connection.peer,
        transport.get_extra_info("peername") if transport else None,
        transport.get_extra_info("sockname") if transport else None,
    )
    if key == "gone":  # the peer closed its socket before its hello was read: nobody is left to answer
        return None
    # Admission is decided before the token is looked at, so a throttled guesser learns nothing from the answer;
    # the right token of anyone not throttled is checked at once and never waits for others' failures.
    if not state.throttle.admit(key):
        await _refuse(
            connection,
            ErrorCode.RATE_LIMITED,
            "too many wrong tokens from this user or address; wait a minute, then read the token with "
            "`ace-bridge token`",
            WSCloseCode.POLICY_VIOLATION,
        )
        return None
    # The challenge itself tells whoever holds a candidate token whether it is right (its proof checks out or not),
    # so it is counted as a wrong token when it is issued, with no await between admission and the count (many
    # parallel connections cannot all be admitted first), and forgiven once the client's proof is right.
    answer_at = time.monotonic() + state.throttle.failed(key)
    proved = await _mutual_proof(state, connection, hello)
    if proved is False or proved is True:  # hung up or sent no proof: it did not accept ours, or has no token
        return None
    person = proved
    if person is None:
        wait = answer_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # answered at this key's reserved slot: guesses queue up per principal
        await _refuse(
            connection,
            ErrorCode.UNAUTHORIZED,
            "wrong or missing token; read it with `ace-bridge token` on the daemon's machine",
            WSCloseCode.POLICY_VIOLATION,
        )
        return None
    state.throttle.succeeded(key)
    if (key.startswith("uid:") and not state.throttle.exempt(key)) or not _is_loopback(connection.peer):
        # Another user's (or a remote machine's) connections share one queue share, however many it opens; the
        # daemon's own user's editors keep one each (that user can read the token file anyway).
        connection.principal = f"peer:{key}"
    state.guard.settled(request.protocol)
    if isinstance(ws, BridgeWebSocket):
        ws.raise_frame_limit(request, state.config.max_frame_bytes)
    claimed, new_secret = _claim_client_id(state, hello)
    if not claimed:
        await _refuse(
            connection,
            ErrorCode.UNAUTHORIZED,
            f"client_id {hello.client_id!r:.60} belongs to another client: resuming it needs the "
            "client_secret its first holder received in welcome. Use a new client_id, or update the "
            "plugin so it keeps that secret",
            WSCloseCode.POLICY_VIOLATION,
        )
        return None
    session = state.hub.sessions.pop(hello.client_id, None)
    resumed = session is not None and hello.session == session.session_id
    if session is None:
        session = ClientSession(hello.client_id, secrets.token_hex(8))
    state.hub.sessions[hello.client_id] = session  # last in the order: the most recently connected
    previous = session.connection
    if previous is not None:
        previous.send(
            Error(
                code=ErrorCode.SUPERSEDED.value, message="another connection resumed this session; this one is closed"
            )
        )
        previous.outbox.put_nowait(None)
        asyncio.get_running_loop().create_task(
            previous.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"superseded")
        )
    session.connection = connection
    session.person = person
    connection.segments.pool = session.segment_pool
    session.client_name, session.client_version, session.editor = (
        hello.client_name,
        hello.client_version,
        hello.editor,
    )
    session.previews = bool(hello.previews)
    session.offers, session.documents = hello.offers, []
    session.connected_since = time.time()
    jobs = state.queue.deliverable(hello.client_id)
    pending = [j.id for j in jobs if j.state.finished]
    welcome = Welcome(
        server_version=__version__,
        protocol_version=AUTH_VERSION,
        session=session.session_id,
        limits=state.limits(),
        engine=state.engine_state(),
        tasks=state.task_table(),
        resumed=resumed or bool(jobs),
        pending=pending,
        id=hello.id,
        shm=connection.segments.offer() if hello.shm else None,
        client_secret=new_secret,
        offers=[r.offer_id for r in state.hub.offers.for_client(hello.client_id)]
        if hello.offers in OFFER_MODES
        else [],
    )
    connection.send(welcome)
    stored = [job for job in jobs if job.results and job.state.finished]
    for job in jobs:  # where each job stands, at once; stored results follow, streamed
        if job not in stored:
            for message in state.queue.replay_messages(job):
                connection.send(message)
    if stored:
        connection.replay = asyncio.get_running_loop().create_task(_stream_replay(state, connection, stored))
    if welcome.offers:
        _keep(asyncio.get_running_loop().create_task(send_offers(state, connection, hello.client_id)))
    state.hub.changed()
    return session


_TASKS: set[asyncio.Task[None]] = set()


def _keep(task: asyncio.Task[None]) -> None:
    """Hold a fire-and-forget task until it ends (the loop keeps only a weak reference)."""
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def send_offers(state: AppState, connection: Connection, client_id: str, offer_id: str | None = None) -> None:
    """The results the panel sent this editor (all still waiting, or just `offer_id`), read on a worker thread."""
    for record in state.hub.offers.for_client(client_id):
        if offer_id is not None and record.offer_id != offer_id:
            continue
        try:
            message = await asyncio.to_thread(offer_message, state.history, record)
        except Exception as exc:  # the entry was deleted meanwhile: tell the panel, not the editor
            state.hub.offers.done(client_id, record.offer_id, False, f"the result is gone from history ({exc})", "")
            state.hub.changed()
            continue
        if connection.ws.closed:
            return
        connection.send(message)


async def _mutual_proof(state: AppState, connection: Connection, hello: Hello) -> str | None | bool:
    """Protocol 2 (ace_protocol.auth): prove to the client that this daemon holds the token its hello names, then
    check the client's proof. The person ("" for the daemon's own token), None for a wrong proof, False when no
    proof came. An unknown token id gets a challenge made with a random key, indistinguishable from a real one."""
    found = state.token_for_id(hello.token_id)
    key_token = found[0] if found else secrets.token_urlsafe(32)
    client_nonce, server_nonce = str(hello.nonce), new_nonce()
    connection.send(Challenge(nonce=server_nonce, proof=auth_proof(key_token, "server", client_nonce, server_nonce)))
    try:
        frame = await connection.ws.receive(timeout=HELLO_TIMEOUT_S)
        if frame.type != WSMsgType.BINARY:
            return False
        reply = decode_client_message(frame.data, max_frame_bytes=PREAUTH_FRAME_BYTES)
    except (asyncio.TimeoutError, ProtocolError):
        return False
    if not isinstance(reply, Prove):
        return False
    if found is None or not proof_matches(reply.proof, key_token, "client", client_nonce, server_nonce):
        return None
    return found[1]


async def _stream_replay(state: AppState, connection: Connection, jobs: list[Job]) -> None:
    """Stored results of finished jobs, one job at a time: read and decoded on a worker thread (never on the event
    loop, so other editors are not held up), and the next job only once this one's frames have been sent, so a
    reconnect with many unacknowledged results holds one job's pixels at a time."""
    for job in jobs:
        if connection.ws.closed or connection.stalled:
            return
        messages = await asyncio.to_thread(state.queue.replay_messages, job)
        for message in messages:
            connection.send(message)
        await connection.outbox.join()


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _claim_client_id(state: AppState, hello: Hello) -> tuple[bool, str | None]:
    """(allowed, secret to give). A client_id belongs to its first holder: a later hello with that id must carry
    the secret the first one got (or sent), so a token holder cannot take over another editor's jobs and results.
    The owner survives restarts through the journal (`Job.owner`)."""
    owners = state.hub.owners
    owner = owners.get(hello.client_id) or next(
        (j.owner for j in state.queue.jobs.values() if j.client_id == hello.client_id and j.owner), None
    )
    if owner:
        owners[hello.client_id] = owner
        given = hello.client_secret
        return (given is not None and hmac.compare_digest(_secret_hash(given), owner)), None
    secret = hello.client_secret or secrets.token_urlsafe(24)
    owners[hello.client_id] = _secret_hash(secret)
    return True, None if hello.client_secret else secret


def _visible_to(entry: dict, client_id: str) -> dict:
    """A `status` entry as another client may see it: where a job stands, never whose it is or what it says."""
    if entry.get("client_id") == client_id:
        return entry
    return {**entry, **{k: "" for k in ("job_id", "client_id", "editor", "prompt", "label", "person") if k in entry}}


async def _receive_loop(state: AppState, session: ClientSession, connection: Connection) -> None:
    ws = connection.ws
    async for frame in ws:
        if frame.type == WSMsgType.TEXT:
            connection.send(Error(code=ErrorCode.BAD_REQUEST.value, message="frames must be binary msgpack"))
            continue
        if frame.type != WSMsgType.BINARY:
            continue
        try:
            message = decode_client_message(
                frame.data, max_frame_bytes=state.config.max_frame_bytes, max_pixels=state.config.max_pixels
            )
        except ProtocolError as exc:
            connection.send(_decode_failure_reply(frame.data, exc, state.config.max_frame_bytes))
            continue
        wait = state.pacer.delay(principal_of(session), message)
        if wait > 0:
            # Past its share of the request budget: this connection is not read until the share has come round
            # again, so its frames wait in the socket while every other sender's are handled.
            await asyncio.sleep(wait)
            if ws.closed:
                break  # nothing was promised for this frame; the client sees the connection end
        try:
            await _dispatch(state, session, connection, message)
        except ProtocolError as exc:
            request_id = getattr(message, "id", None)
            if isinstance(message, Submit):
                connection.send(Failed(code=exc.code.value, message=exc.message, id=request_id))
            else:
                connection.send(Error(code=exc.code.value, message=exc.message, id=request_id))
        except Exception as exc:  # the daemon must survive anything a client sends
            log.exception("error handling %s", message.TYPE)
            connection.send(
                Error(
                    code=ErrorCode.INTERNAL.value,
                    message=f"internal error: {type(exc).__name__}",
                    id=getattr(message, "id", None),
                )
            )


def principal_of(session: ClientSession) -> str:
    """Whom a session's requests and jobs count against: the person behind a named token, else its connection's
    principal (this connection, or another user / a remote machine as a whole: see `_handshake`)."""
    if getattr(session, "person", ""):
        return f"person:{session.person}"
    return session.connection.principal if session.connection is not None else session.client_id


def _decode_failure_reply(data: bytes, exc: ProtocolError, max_frame_bytes: int) -> Message:
    """Answer a frame that failed validation so the waiting request gets its reply (matched by `id`)."""
    try:
        wire = decode_map(data, max_frame_bytes=max_frame_bytes)
    except ProtocolError:
        wire = _peek_id_and_type(data)  # undecodable as a whole: the id and type may still be readable
    request_id = wire.get("id") if isinstance(wire.get("id"), str) and len(wire["id"]) <= 128 else None
    if wire.get("type") == "submit":
        return Failed(code=exc.code.value, message=exc.message, id=request_id)
    return Error(code=exc.code.value, message=exc.message, id=request_id)


def _peek_id_and_type(data: bytes) -> dict[str, Any]:
    """`id` and `type` of a frame the decoder refused (too deep, a string too long, trailing bytes, ...): the
    top-level map is walked key by key, skipping values unread, so the refusal still names the request."""
    found: dict[str, Any] = {}
    try:
        unpacker = msgpack.Unpacker(
            raw=False,
            max_buffer_size=max(len(data), 1),
            max_str_len=1 << 20,
            max_bin_len=len(data),
            max_array_len=10_000,
            max_map_len=10_000,
            max_ext_len=0,
        )
        unpacker.feed(data)
        for _ in range(min(unpacker.read_map_header(), 10_000)):
            key = unpacker.unpack()
            if key in ("id", "type") and key not in found:
                found[key] = unpacker.unpack()
                if len(found) == 2:
                    break
            else:
                unpacker.skip()
    except Exception:  # whatever the frame holds, this only ever gives up
        pass
    return found


async def _dispatch(state: AppState, session: ClientSession, connection: Connection, message: Message) -> None:
    if isinstance(message, Submit):
        job = await build_job(state, session, connection.segments.resolve(message))
        state.queue.accept(job)
        try:
            await state.queue.journal.durable()  # nothing is promised before it is on disk
        finally:
            position = state.queue.enqueue(job)  # journalled: queued even if this connection went away meanwhile
        connection.send(Accepted(id=message.id, job_id=job.id, position=position, seed=job.seed))
        state.hub.changed()
    elif isinstance(message, Cancel):
        if not state.queue.cancel(message.job_id, session.client_id):
            raise bad_request(f"no queued or running job {message.job_id!r:.40} of this client")
    elif isinstance(message, Ack):
        connection.segments.release_jobs(message.job_ids)
        state.queue.ack(session.client_id, message.job_ids)
    elif isinstance(message, Release):
        connection.segments.release(message.segments)
    elif isinstance(message, Alloc):
        segment = connection.segments.allocate(message.size)
        connection.send(Allocated(id=message.id, segment=segment.describe()))
    elif isinstance(message, ShmReady):
        connection.segments.confirm(message.nonce)
        state.hub.changed()
    elif isinstance(message, StatusRequest):
        if connection.status_backlog():
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"{connection.max_status_waiting} status answers already wait to be sent to this client: read them "
                "before asking again",
            )
        queue = [_visible_to(entry, session.client_id) for entry in state.queue_summary()]
        connection.send(
            StatusReply(engine=state.engine_state(), queue=queue, paused=state.config.gate.paused, id=message.id)
        )
    elif isinstance(message, Documents):
        session.documents = message.documents
        state.hub.changed()
    elif isinstance(message, OfferDone):
        state.hub.offers.done(session.client_id, message.offer_id, message.ok, message.message, message.document)
        state.hub.changed()
    elif isinstance(message, MODEL_MESSAGES):  # the editors' first-run box (model_service.py)
        connection.send(await state.models.handle(state, getattr(session, "person", ""), message))
    elif isinstance(message, Hello):
        raise bad_request("already said hello on this connection")


async def build_job(state: AppState, session: ClientSession, message: Submit) -> Job:
    """Validate a submit against the task table and decode its images; every problem is a typed error."""
    spec = TASKS.get(message.task)
    if spec is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TASK, f"unknown task {message.task!r:.40}; known tasks: {', '.join(TASKS)}"
        )
    available = state.available_tasks()
    if message.task not in available:
        raise ProtocolError(ErrorCode.MODEL_MISSING, state.missing_message(message.task))
    params = spec.validate_params({"steps": state.settings["default_steps"], **message.params})
    if params.get("max_tokens", 0) > state.config.max_tokens_limit:
        raise bad_request(f"parameter 'max_tokens' must be at most {state.config.max_tokens_limit} on this daemon")
    if spec.needs_image and message.image is None:
        raise bad_request(f"task '{spec.name}' needs an image")
    if not spec.needs_image and message.image is not None and spec.name in ("subject", "portrait", "generate"):
        raise bad_request(f"task '{spec.name}' makes a new image; send width and height instead of an image")
    if not spec.min_references <= len(message.references) <= spec.max_references:
        need = (
            f"exactly {spec.min_references}"
            if spec.min_references == spec.max_references
            else f"{spec.min_references} to {spec.max_references}"
        )
        raise bad_request(f"task '{spec.name}' takes {need} reference image(s); got {len(message.references)}")
    if message.mask is not None and message.image is None:
        raise bad_request("a mask needs an image")
    if (
        message.mask is not None
        and message.image is not None
        and ((message.mask.width, message.mask.height) != (message.image.width, message.image.height))
    ):
        raise bad_request(
            f"the mask is {message.mask.width}x{message.mask.height} but the image is "
            f"{message.image.width}x{message.image.height}; they must match"
        )
    max_pixels = state.config.max_pixels
    named = [
        (what, p)
        for what, p in (
            ("image", message.image),
            ("mask", message.mask),
            *((f"references[{i}]", r) for i, r in enumerate(message.references)),
        )
        if p is not None
    ]
    held = sum(len(p.data) for _, p in named if p.data is not None)
    refusal = state.memory_refusal(held)
    if refusal:
        raise ProtocolError(ErrorCode.QUEUE_FULL, refusal)

    def decode() -> JobInputs:
        image = to_array(message.image, max_pixels=max_pixels) if message.image else None
        mask = to_array(message.mask, max_pixels=max_pixels, what="mask", gray=True) if message.mask else None
        refs = [to_array(r, max_pixels=max_pixels, what=f"references[{i}]") for i, r in enumerate(message.references)]
        return JobInputs(image, mask, refs)

    def check() -> JobInputs:
        """Raw pixels are views of the frame (nothing to decode); encoded files are checked now and decoded when
        the job runs, so a waiting job holds its compressed bytes, not 4 bytes per pixel."""
        encoded = [(what, p) for what, p in named if not p.is_raw]
        for what, payload in encoded:
            check_encoded(payload, max_pixels=max_pixels, what=what)
        return JobInputs(None, None, [], pending=decode) if encoded else decode()

    # Only encoded files need a worker thread (their headers and CRCs are read); raw pixels are views, and a job
    # without images has nothing to look at: both are answered at once, so a flood of submits that queue up for the
    # shared worker threads never delays an editor's `accepted`.
    inputs = await asyncio.to_thread(check) if any(not p.is_raw for _, p in named) else check()
    inputs.held_bytes = held
    if message.image is not None:
        width, height = message.image.width, message.image.height
    else:
        width, height = params.get("width", 1024), params.get("height", 1024)
    seed = params["seed"] if params.get("seed", -1) >= 0 else secrets.randbelow(2**32)
    params = {**params, "seed": seed}
    return Job(
        id=new_job_id(),
        client_id=session.client_id,
        task=spec.name,
        prompt=message.prompt,
        params=params,
        seed=seed,
        created=state.config.clock(),
        width=width,
        height=height,
        editor=session.editor or session.client_name,
        label=message.label,
        person=session.person,
        principal=principal_of(session),
        owner=state.hub.owners.get(session.client_id, ""),
        inputs=inputs,
    )
