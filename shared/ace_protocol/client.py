"""Blocking client for plugin worker threads and the command line.

One background thread reads frames and routes them: replies to the request that asked (by `id`), job events to
the job's handle (by `job_id`). When the connection drops, it reconnects with the same session and the daemon
redelivers results that finished meanwhile, so a worker iterating `JobHandle.events()` simply keeps waiting.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import os
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import __version__
from .auth import AUTH_VERSION, new_nonce, proof_matches, token_id
from .auth import proof as auth_proof
from .bundled import websockets_module
from .codec import DEFAULT_MAX_FRAME_BYTES, decode_server_message, encode, encode_fragments
from .discovery import config_dir, resolve
from .errors import ErrorCode, ProtocolError
from .images import ImagePayload
from .messages import (
    MAX_DOCUMENTS,
    Accepted,
    Ack,
    Alloc,
    Allocated,
    Cancel,
    Cancelled,
    Challenge,
    Documents,
    Done,
    Error,
    Failed,
    Hello,
    Message,
    ModelPull,
    ModelPullCancel,
    ModelState,
    ModelStatusRequest,
    Offer,
    OfferDone,
    Prove,
    Release,
    Result,
    ShmReady,
    StatusReply,
    StatusRequest,
    Submit,
    Welcome,
)
from .shm import SegmentRef, SharedMemoryUnavailable, describe, read_segment, write_segment
from .wsmask import connection_class

if TYPE_CHECKING:  # type checkers read the installed websockets; see bundled.py for the run-time choice
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.sync.client import ClientConnection
    from websockets.sync.client import connect as ws_connect
else:
    try:
        _ws_exceptions = websockets_module("exceptions")
        _ws_client = websockets_module("sync.client")
    except ImportError as exc:  # pragma: no cover - only in a broken editor install
        raise ImportError(
            "ace_protocol needs the 'websockets' package (>= 13). Reinstall the plugin with `ace-bridge install`."
        ) from exc
    ConnectionClosed = _ws_exceptions.ConnectionClosed
    InvalidHandshake = _ws_exceptions.InvalidHandshake
    InvalidStatus = _ws_exceptions.InvalidStatus
    InvalidURI = _ws_exceptions.InvalidURI
    ClientConnection = _ws_client.ClientConnection
    ws_connect = _ws_client.connect


#: Pixels below this go in the frame: the extra `alloc` round trip would cost more than it saves.
SHARED_MEMORY_MIN_BYTES = 256 * 1024

# websockets 17 warns when connect() is not used as a context manager unless `legacy=True` says we mean it;
# older releases (vendored into editors) do not know the keyword.
_LEGACY_KW: dict[str, Any] = {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {}


class ClientError(Exception):
    """Base of the client's exceptions; `str()` is a message for the user."""


class DaemonNotRunning(ClientError):
    def __init__(self, url: str, detail: str = "") -> None:
        super().__init__(
            f"The ACE Bridge daemon is not running at {url}{f' ({detail})' if detail else ''}. "
            "Start it with `ace-bridge serve` (or `ace-bridge serve --demo` to try it without model weights)."
        )
        self.url = url


class Unauthorized(ClientError):
    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The daemon refused the token. On this machine the token is read from the daemon's token file; "
            "for a daemon elsewhere copy the output of `ace-bridge token` into the plugin settings."
        )


class VersionMismatch(ClientError):
    pass


class JobError(ClientError):
    def __init__(self, error: ProtocolError) -> None:
        super().__init__(error.message)
        self.code = error.code


def normalise_fingerprint(value: str | None) -> str | None:
    """'ab:cd:…' or 'ABCD…' -> 'ABCD…'; None stays None."""
    if not value:
        return None
    return value.replace(":", "").replace(" ", "").upper()


def format_fingerprint(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2))


def new_client_id(prefix: str = "client") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _secret_path(client_id: str) -> Any:
    return config_dir() / "clients" / hashlib.sha256(client_id.encode()).hexdigest()[:32]


def load_client_secret(client_id: str) -> str | None:
    """The resume secret the daemon gave this client_id's first holder (kept next to the token, 0600)."""
    try:
        return _secret_path(client_id).read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None


def save_client_secret(client_id: str, secret: str) -> None:
    path = _secret_path(client_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret)
    except OSError:
        pass  # kept in memory for this client's reconnects anyway


class JobHandle:
    """Events of one job, in order, ending with `done`, `failed` or `cancelled`."""

    def __init__(self, client: BridgeClient, job_id: str | None = None) -> None:
        self._client = client
        self.id = job_id
        self.seed: int | None = None
        self.position: int | None = None
        self._events: queue.Queue[Message] = queue.Queue()
        self.finished = False

    def _push(self, event: Message) -> None:
        self._events.put(event)

    def events(self, timeout: float | None = None) -> Iterator[Message]:
        """Yield events until a terminal one. `timeout` bounds the wait for each event (TimeoutError)."""
        while not self.finished:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event from job {self.id} within {timeout} s") from None
            if isinstance(event, (Done, Failed, Cancelled)):
                self.finished = True
            yield event

    def cancel(self) -> None:
        if self.id and not self.finished:
            self._client.cancel(self.id)


class BridgeClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        port: int | None = None,
        client_id: str | None = None,
        client_name: str = "ace-bridge-client",
        client_version: str = __version__,
        editor: str = "",
        session: str | None = None,
        connect_timeout: float = 5.0,
        reconnect_timeout: float = 300.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        cafile: str | None = None,
        fingerprint: str | None = None,
        previews: bool = False,
        shared_memory: bool | None = None,
        client_secret: str | None = None,
        offers: str = "",
    ) -> None:
        """`cafile` verifies a `wss://` daemon against a CA bundle; `fingerprint` (SHA-256 of the certificate, as
        `ace-bridge serve` prints it; env ACE_BRIDGE_FINGERPRINT) pins a self-signed one instead. `previews` asks the
        daemon for small JPEG previews in `progress.preview` (every few steps) of this client's jobs.
        `shared_memory` (default on; env ACE_BRIDGE_SHARED_MEMORY=0 turns it off) lets big pixel buffers pass through
        the daemon's shared-memory segments when both run on one Linux machine; frames are the fallback."""
        endpoint = resolve(url, token, port)
        self.url = endpoint.url
        self.token = endpoint.token
        self.client_id = client_id or new_client_id()
        #: Proves this client is the first holder of `client_id` when it resumes (docs/protocol.md §4).
        self.client_secret = client_secret or (load_client_secret(client_id) if client_id else None)
        self.client_name = client_name
        self.client_version = client_version
        self.editor = editor
        self.session = session
        self.previews = previews
        if shared_memory is None:
            shared_memory = os.environ.get("ACE_BRIDGE_SHARED_MEMORY", "1").strip().lower() not in ("0", "no", "off")
        self.shared_memory = shared_memory
        #: Whether this connection passed the shared-memory probe; why not, for diagnostics.
        self.shared_memory_active = False
        self.shared_memory_problem = ""
        self.connect_timeout = connect_timeout
        self.reconnect_timeout = reconnect_timeout
        self.max_frame_bytes = max_frame_bytes
        self.cafile = cafile
        self.fingerprint = normalise_fingerprint(fingerprint or os.environ.get("ACE_BRIDGE_FINGERPRINT"))
        self.welcome: Welcome | None = None
        self._ws: ClientConnection | None = None
        self._lock = threading.RLock()
        # A message sent in fragments must not meet another thread's send (websockets refuses that).
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._replies: dict[str, queue.Queue[Message]] = {}
        self._jobs: dict[str, JobHandle] = {}
        self._unclaimed: queue.Queue[JobHandle] = queue.Queue()
        self._closing = False
        self._reader: threading.Thread | None = None
        self._abandoned: ClientConnection | None = None
        self.on_connection_change: Any = None  # optional callable(str state) for UIs
        #: How this editor takes results sent from the panel (`hello.offers`: "live", "later" or "" for none);
        #: each `offer` goes to `on_offer(offer)` (reader thread) if set, else waits for `offers()`.
        self.offers_mode = offers
        self.on_offer: Any = None
        self._offers: queue.Queue[Offer] = queue.Queue()
        self._documents: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------ connection

    def connect(self) -> Welcome:
        """Open the connection and handshake. Raises DaemonNotRunning, Unauthorized or VersionMismatch."""
        self._closing = False
        welcome = self._open()
        self._reader = threading.Thread(target=self._read_loop, name="ace-bridge-reader", daemon=True)
        self._reader.start()
        return welcome

    def _open(self) -> Welcome:
        headers = None  # protocol 2: the token is proved (ace_protocol.auth), never sent, not even in a header
        tls: dict[str, Any] = {}
        if self.url.startswith("wss://"):
            tls["ssl"] = self._tls_context()
            if self.fingerprint:
                tls["server_hostname"] = "ace-bridge"  # the pin, not the name, identifies the daemon
        try:
            ws = ws_connect(
                self.url,
                **_LEGACY_KW,
                **tls,
                open_timeout=self.connect_timeout,
                max_size=self.max_frame_bytes,
                compression=None,
                create_connection=connection_class(ClientConnection),
                additional_headers=headers,
                user_agent_header=f"{self.client_name}/{self.client_version}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise Unauthorized(f"The daemon at {self.url} refused the connection (HTTP {status}).") from None
            raise DaemonNotRunning(self.url, f"HTTP {status}") from None
        except InvalidURI as exc:
            raise ClientError(f"'{self.url}' is not a WebSocket URL (expected ws://host:port/v1/ws)") from exc
        except ssl.SSLCertVerificationError as exc:
            raise ClientError(
                f"the daemon at {self.url} presented a certificate that could not be verified ({exc.verify_message}); "
                "pass its fingerprint (printed by `ace-bridge serve`) or a CA file"
            ) from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise DaemonNotRunning(self.url, type(exc).__name__) from None
        if self.fingerprint:
            self._check_pin(ws)
        hello = Hello(
            client_id=self.client_id,
            client_name=self.client_name,
            client_version=self.client_version,
            protocol_versions=[AUTH_VERSION],
            editor=self.editor,
            session=self.session,
            previews=self.previews,
            shm=self.shared_memory,
            client_secret=self.client_secret,
            nonce=new_nonce(),
            token_id=token_id(self.token) if self.token else None,
            offers=self.offers_mode,
        )
        try:
            ws.send(encode(hello))
            reply = decode_server_message(ws.recv(timeout=self.connect_timeout + 25))
            if isinstance(reply, Challenge):
                # The daemon proves it holds our token before anything else goes to it: a program that took the
                # port while the daemon was down gets no token, no image and no shared-memory request.
                if not self.token or not proof_matches(
                    reply.proof, self.token, "server", str(hello.nonce), reply.nonce
                ):
                    ws.close()
                    raise Unauthorized(
                        f"the program answering at {self.url} did not prove it holds your token: the token is wrong "
                        "or missing (`ace-bridge token` prints it), or another program took the daemon's port. "
                        "Nothing was sent to it."
                    )
                ws.send(encode(Prove(proof=auth_proof(self.token, "client", str(hello.nonce), reply.nonce))))
                reply = decode_server_message(ws.recv(timeout=self.connect_timeout + 25))
            elif isinstance(reply, Welcome):  # a welcome without the daemon's proof: not our daemon
                ws.close()
                raise Unauthorized(
                    f"the program answering at {self.url} did not prove it holds your token (it "
                    "skipped the challenge); another program may have taken the daemon's port. "
                    "Nothing was sent to it."
                )
            elif isinstance(reply, Error) and reply.code == ErrorCode.UNAUTHORIZED.value:
                ws.close()  # an older daemon asks for the token itself; it is not sent to it
                raise VersionMismatch(
                    f"the daemon at {self.url} is older than this client (it wants the token sent, "
                    "not proved): update ACE Bridge on the daemon's machine"
                )
        except (ConnectionClosed, TimeoutError, OSError) as exc:
            ws.close()
            raise DaemonNotRunning(self.url, f"handshake failed: {type(exc).__name__}") from None
        except ProtocolError as exc:
            ws.close()
            raise ClientError(f"the daemon sent a malformed handshake reply: {exc.message}") from None
        if isinstance(reply, Error):
            ws.close()
            if reply.code == ErrorCode.UNAUTHORIZED.value:
                raise Unauthorized(reply.message)
            if reply.code == ErrorCode.UNSUPPORTED_VERSION.value:
                raise VersionMismatch(reply.message)
            raise ClientError(reply.message)
        if not isinstance(reply, Welcome):
            ws.close()
            raise ClientError(f"expected 'welcome' from the daemon, got '{reply.TYPE}'")
        active = self._probe_shared_memory(ws, reply.shm) if self.shared_memory else False
        with self._lock:
            self._ws = ws
            self.session = reply.session
            self.welcome = reply
            if reply.client_secret:
                self.client_secret = reply.client_secret
                save_client_secret(self.client_id, reply.client_secret)
            self.shared_memory_active = active
            documents = self._documents
        if documents is not None and reply.offers is not None:  # a reconnect: the daemon forgot them
            try:
                ws.send(encode(Documents(documents=documents)))
            except (ConnectionClosed, OSError):
                pass  # the reader notices the drop and reconnects, sending them again
        self._notify("connected")
        return reply

    def _probe_shared_memory(self, ws: ClientConnection, offer: dict[str, Any] | None) -> bool:
        """Read the nonce the daemon left in its probe segment and echo it: proof that we share its memory."""
        if offer is None:
            self.shared_memory_problem = "the daemon did not offer shared memory (not on loopback, or not Linux)"
            return False
        try:
            nonce = read_segment(describe(offer)).decode("ascii")
            ws.send(encode(ShmReady(nonce=nonce)))
        except (SharedMemoryUnavailable, UnicodeDecodeError) as exc:
            self.shared_memory_problem = str(exc) or type(exc).__name__
            return False
        except (ConnectionClosed, OSError):
            return False
        self.shared_memory_problem = ""
        return True

    def _tls_context(self) -> ssl.SSLContext:
        if self.fingerprint:
            # A self-signed certificate has no chain to check; the SHA-256 pin below is the verification.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        return ssl.create_default_context(cafile=self.cafile)

    def _check_pin(self, ws: ClientConnection) -> None:
        sock = ws.socket
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        got = hashlib.sha256(der).hexdigest().upper() if der else ""
        if got != self.fingerprint:
            ws.close()
            raise ClientError(
                f"the daemon at {self.url} presented a certificate with SHA-256 {format_fingerprint(got) or 'none'}, "
                f"not the pinned {format_fingerprint(self.fingerprint or '')}: refusing to send the token"
            )

    def close(self) -> None:
        self._closing = True
        ws = self._ws
        if ws is not None:
            ws.close()
        if self._reader and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    def __enter__(self) -> BridgeClient:
        if self._ws is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _notify(self, state: str) -> None:
        if callable(self.on_connection_change):
            try:
                self.on_connection_change(state)
            except Exception:  # a UI callback must not kill the reader
                pass

    # ------------------------------------------------------------ reading

    def _read_loop(self) -> None:
        while True:
            ws = self._ws
            try:
                assert ws is not None
                for raw in ws:
                    if ws is self._abandoned:
                        break  # frames after one we could not read wait for the redelivery after reconnecting
                    if isinstance(raw, str):
                        continue
                    try:
                        self._dispatch(decode_server_message(raw, max_frame_bytes=self.max_frame_bytes))
                    except ProtocolError:
                        continue  # a frame we cannot read must not take the session down
            except ConnectionClosed:
                pass
            if self._closing or not self._reconnect():
                self._fail_all("lost the connection to the daemon and could not reconnect")
                return

    def _reconnect(self) -> bool:
        self._notify("reconnecting")
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        while not self._closing and time.monotonic() < deadline:
            try:
                self._open()
                return True
            except (Unauthorized, VersionMismatch):
                return False
            except ClientError:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return False

    def _fail_all(self, why: str) -> None:
        self._notify("disconnected")
        for handle in list(self._jobs.values()):
            if not handle.finished:
                handle._push(Failed(code=ErrorCode.INTERRUPTED.value, message=why, job_id=handle.id))
        for reply_queue in list(self._replies.values()):
            reply_queue.put(Error(code=ErrorCode.INTERRUPTED.value, message=why))

    def _materialise(self, message: Message) -> Message | None:
        """A result whose pixels lie in a daemon segment becomes an ordinary one (the segment is copied, then
        released). If it cannot be read, drop it and reconnect without shared memory: the daemon redelivers every
        unacknowledged result in frames, so nothing is lost."""
        if not isinstance(message, Result) or message.image.shm is None:
            return message
        ref = message.image.shm
        try:
            data = read_segment(ref)
        except SharedMemoryUnavailable as exc:
            self.shared_memory = False
            self.shared_memory_problem = f"a result segment could not be read ({exc}); using frames"
            ws = self._ws
            if ws is not None:
                self._abandoned = ws
                ws.close()
            return None
        try:
            self._send(Release(segments=[ref.segment]))
        except DaemonNotRunning:
            pass  # the daemon frees it with the connection
        return replace(message, image=replace(message.image, data=data, shm=None))

    def _dispatch(self, message: Message) -> None:
        materialised = self._materialise(message)
        if materialised is None:
            return
        message = materialised
        if isinstance(message, Offer):
            self._offer_arrived(message)
            return
        request_id = getattr(message, "id", None)
        job_id = getattr(message, "job_id", None)
        if isinstance(message, Error) and message.code == ErrorCode.SUPERSEDED.value:
            self._closing = True  # another connection took over this session; do not fight it
        if isinstance(message, Accepted) and job_id is not None:
            # Register the job before anyone can see the reply, so its first events find their handle.
            with self._lock:
                self._jobs.setdefault(job_id, JobHandle(self, job_id))
        if request_id is not None and request_id in self._replies:
            self._replies[request_id].put(message)
            return
        if job_id is None:
            return
        with self._lock:
            handle = self._jobs.get(job_id)
            if handle is None:
                # A job this connection did not submit: a result redelivered after a reconnect or restart.
                handle = JobHandle(self, job_id)
                self._jobs[job_id] = handle
                self._unclaimed.put(handle)
        handle._push(message)

    # ------------------------------------------------------------ requests

    def _request(self, message: Message, timeout: float = 60.0) -> Message:
        request_id = f"r{next(self._ids)}"
        message.id = request_id  # type: ignore[attr-defined]
        reply_queue: queue.Queue[Message] = queue.Queue()
        self._replies[request_id] = reply_queue
        try:
            self._send(message)
            try:
                return reply_queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the daemon did not answer '{message.TYPE}' within {timeout} s") from None
        finally:
            self._replies.pop(request_id, None)

    def _send(self, message: Message) -> None:
        ws = self._ws
        if ws is None:
            raise DaemonNotRunning(self.url, "not connected")
        try:
            # A frame with image pixels goes out as fragments that reference the pixel buffers: no joined copy of
            # the request, and the daemon reads the first fragments while later ones are being masked and sent.
            pieces = encode_fragments(message)
            with self._send_lock:
                ws.send(pieces[0] if len(pieces) == 1 else pieces)
        except (ConnectionClosed, OSError) as exc:
            raise DaemonNotRunning(self.url, f"connection lost: {type(exc).__name__}") from None

    def submit(
        self,
        task: str,
        prompt: str = "",
        *,
        image: ImagePayload | None = None,
        mask: ImagePayload | None = None,
        references: Sequence[ImagePayload] = (),
        params: dict[str, Any] | None = None,
        label: str = "",
        timeout: float = 120.0,
    ) -> JobHandle:
        """Send a job; returns once the daemon journalled it. Raises JobError for a refused job."""
        message = Submit(
            id="",
            task=task,
            prompt=prompt,
            image=image,
            mask=mask,
            references=list(references),
            params=dict(params or {}),
            label=label,
        )
        shared = self._into_shared_memory(message, timeout) if self.shared_memory_active else message
        reply = self._request(shared, timeout=timeout)
        if (
            shared is not message
            and isinstance(reply, (Failed, Error))
            and reply.code == ErrorCode.BAD_REQUEST.value
            and "segment" in reply.message
        ):
            reply = self._request(message, timeout=timeout)  # e.g. reconnected between alloc and submit: frames
        if isinstance(reply, (Failed, Error)):
            raise JobError(ProtocolError(reply.code, reply.message))
        job_id = reply.job_id  # type: ignore[attr-defined]
        with self._lock:
            handle = self._jobs.get(job_id)
            if handle is None:
                handle = JobHandle(self, job_id)
                self._jobs[job_id] = handle
        handle.position = reply.position  # type: ignore[attr-defined]
        handle.seed = reply.seed  # type: ignore[attr-defined]
        return handle

    def _into_shared_memory(self, message: Submit, timeout: float) -> Submit:
        """The submit with its raw pixels copied into one daemon segment, or unchanged when that is not worth it or
        fails (then the pixels travel in the frame as always)."""
        raw = [p for p in message.images() if p.is_raw and p.shm is None]
        total = sum(p.nbytes for p in raw)
        if total < SHARED_MEMORY_MIN_BYTES:
            return message
        reply = self._request(Alloc(id="", size=total), timeout=timeout)
        if not isinstance(reply, Allocated):
            return message  # e.g. the daemon's per-connection cap; frames still work
        try:
            segment = describe(reply.segment)
            offsets: dict[int, int] = {}
            pieces: list[tuple[int, Any]] = []
            cursor = 0
            for payload in raw:
                offsets[id(payload)] = cursor
                pieces.append((cursor, payload.data))
                cursor += payload.nbytes
            write_segment(segment, pieces)
        except SharedMemoryUnavailable as exc:
            self.shared_memory_active = False
            self.shared_memory_problem = str(exc)
            return message

        def shared(payload: ImagePayload, where: str) -> ImagePayload:
            if id(payload) not in offsets:
                return payload
            return replace(payload, data=b"", shm=SegmentRef(segment.segment, offsets[id(payload)], payload.nbytes))

        return message.with_images(shared)

    def cancel(self, job_id: str) -> None:
        self._send(Cancel(job_id=job_id))

    def ack(self, *job_ids: str) -> None:
        """Tell the daemon these results arrived; it stops redelivering them (they stay in history)."""
        if job_ids:
            self._send(Ack(job_ids=list(job_ids)))
            with self._lock:
                for job_id in job_ids:
                    self._jobs.pop(job_id, None)

    def status(self, timeout: float = 30.0) -> StatusReply:
        reply = self._request(StatusRequest(), timeout=timeout)
        if not isinstance(reply, StatusReply):
            raise ClientError(getattr(reply, "message", f"unexpected reply '{reply.TYPE}'"))
        return reply

    def model_status(self, timeout: float = 30.0) -> ModelState:
        """What model the daemon has and how a running download goes (poll it while one runs)."""
        return self._model_request(ModelStatusRequest(), timeout)

    def pull_model(self, *, fft: bool = False, confirm: bool = False, timeout: float = 30.0) -> ModelState:
        """Start or resume the daemon's model download (`confirm`: the user read the size and licence notice)."""
        return self._model_request(ModelPull(fft=fft, confirm=confirm), timeout)

    def cancel_pull(self, timeout: float = 30.0) -> ModelState:
        return self._model_request(ModelPullCancel(), timeout)

    def _model_request(self, message: Message, timeout: float) -> ModelState:
        reply = self._request(message, timeout=timeout)
        if isinstance(reply, Error):
            raise JobError(
                ProtocolError(reply.code, reply.message)
                if reply.code in ErrorCode._value2member_map_
                else ProtocolError(ErrorCode.INTERNAL, reply.message)
            )
        if not isinstance(reply, ModelState):
            raise ClientError(getattr(reply, "message", f"unexpected reply '{reply.TYPE}'"))
        return reply

    # ------------------------------------------------------------ results sent from the panel

    @property
    def takes_offers(self) -> bool:
        """The daemon sends results from its panel (`welcome.offers` set) and this client asked for them."""
        welcome = self.welcome
        return bool(self.offers_mode) and welcome is not None and welcome.offers is not None

    def _offer_arrived(self, offer: Offer) -> None:
        callback = self.on_offer
        if callable(callback):
            try:
                callback(offer)
                return
            except Exception:  # a UI callback must not kill the reader; the offer waits in `offers()` instead
                pass
        self._offers.put(offer)

    def offers(self, wait: float = 0.0) -> list[Offer]:
        """Offers received and not handed to `on_offer`; after connecting, waits up to `wait` s for the ones
        `welcome.offers` announced (a short-lived plug-in takes them this way)."""
        expected = set(self.welcome.offers or ()) if self.welcome is not None else set()
        found: list[Offer] = []
        deadline = time.monotonic() + wait
        while True:
            try:
                remaining = deadline - time.monotonic()
                offer = (
                    self._offers.get(timeout=max(0.0, remaining))
                    if expected and remaining > 0
                    else (self._offers.get_nowait())
                )
            except queue.Empty:
                return found
            found.append(offer)
            expected.discard(offer.offer_id)

    def offer_done(self, offer_id: str, ok: bool, message: str = "", document: str = "") -> None:
        """Tell the daemon (and so the panel) whether the offer was inserted, and where, or why not."""
        self._send(OfferDone(offer_id=offer_id, ok=ok, message=message[:500], document=document[:256]))

    def set_documents(self, documents: Sequence[dict[str, Any]]) -> None:
        """The editor's open documents ([{key, name, active}]) for the panel's choice; sent again after a
        reconnect. Nothing is sent to a daemon that takes no `documents` (older than this client)."""
        self._documents = [dict(d) for d in documents][:MAX_DOCUMENTS]
        if self.takes_offers:
            self._send(Documents(documents=self._documents))

    def fetch_unacknowledged(self, wait: float = 1.0) -> list[JobHandle]:
        """Handles of jobs the daemon redelivered to this client id (finished while it was away)."""
        handles: list[JobHandle] = []
        pending = set(self.welcome.pending if self.welcome else [])
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                handle = self._unclaimed.get(timeout=max(0.0, remaining) if pending else 0.05)
            except queue.Empty:
                break
            handles.append(handle)
            pending.discard(handle.id or "")
            if not pending and remaining <= 0:
                break
        return handles
