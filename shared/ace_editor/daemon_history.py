"""The daemon's result history, read by a plug-in: list a document's results, fetch one to add it again.

The history lives in the daemon (every result is stored with its provenance, newest first) and is served by the
control panel's HTTP API. A plug-in holds the daemon token, so it signs in as the `ace-bridge panel` command does:
the two-step proof at POST /panel/api/code (ace_protocol.auth `panel_code`; the token never travels, so a program
squatting on the port learns nothing) gives a one-time code, /panel/?code=… turns it into a session cookie, then
GET /panel/api/history, /panel/api/meta/<entry> and /panel/api/image/<entry> (a PNG). Standard library only
(urllib), so the editors' Pythons need nothing more.

Which results belong to a document is said by the job's `label`, which the plug-in writes as
`<editor>: <document> at <x>,<y> <w>x<h>` (`job_label`): the panel shows it as is, and `parse_label` gives the
document and the region back, so a result returns to the place it was made for.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .jobs import UserError
from .protocol import auth

#: Submit labels are at most 256 characters (ace_protocol.messages.Submit.label).
LABEL_MAX = 256
_LABEL_RE = re.compile(r"^(?P<editor>[^:]{1,32}): (?P<doc>.*) at (?P<x>-?\d+),(?P<y>-?\d+) (?P<w>\d+)x(?P<h>\d+)$")
_ENTRY_RE = re.compile(r"^[0-9a-f]{32}-\d{1,3}$")


class HistoryError(UserError):
    """The daemon's history could not be read; the message says why and what to do."""


@dataclass(frozen=True)
class Place:
    """Where a job's result belongs: the editor, the document, the region (x, y, width, height)."""

    editor: str
    document: str
    region: tuple[int, int, int, int]


def job_label(editor: str, document: str, region: Sequence[int]) -> str:
    """The submit label naming the document and the region, shortened inside the document name to fit."""
    x, y, w, h = (int(v) for v in region)
    tail = f" at {x},{y} {w}x{h}"
    head = f"{editor}: "
    room = LABEL_MAX - len(head) - len(tail)
    doc = " ".join(str(document).split()) or "image"
    if len(doc) > room:
        doc = doc[: max(1, room - 1)] + "…"
    return head + doc + tail


def parse_label(label: str) -> Place | None:
    """The place a `job_label` names, or None for any other label (a CLI job, an older plug-in)."""
    match = _LABEL_RE.match(str(label or ""))
    if match is None:
        return None
    region = (int(match["x"]), int(match["y"]), int(match["w"]), int(match["h"]))
    return Place(match["editor"], match["doc"], region)


def entries_for(entries: Sequence[dict[str, Any]], editor: str, document: str) -> list[dict[str, Any]]:
    """The history entries (the panel's entry views, newest first) made for `document` in `editor`."""
    out = []
    for entry in entries:
        place = parse_label(str(entry.get("label", "")))
        if place is not None and place.editor == editor and place.document == document:
            out.append(entry)
    return out


def panel_base(ws_url: str) -> str:
    """The daemon's HTTP origin from its WebSocket URL: ws://host:port/v1/ws -> http://host:port."""
    parts = urllib.parse.urlsplit(ws_url)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
        raise HistoryError(f"'{ws_url}' is not a daemon URL (expected ws://host:port/v1/ws)")
    scheme = "https" if parts.scheme in ("wss", "https") else "http"
    return f"{scheme}://{parts.netloc}"


class DaemonHistory:
    """A signed-in reader of one daemon's history (see the module's docstring)."""

    def __init__(self, ws_url: str, token: str, timeout: float = 15.0) -> None:
        if not token:
            raise HistoryError(
                "no daemon token: set the Token field, ACE_BRIDGE_TOKEN, or run the daemon on this computer"
            )
        self.base = panel_base(ws_url)
        self.token = token
        self.timeout = timeout
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())]
        if self.base.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
        self._opener = urllib.request.build_opener(*handlers)
        self._signed_in = False

    def _open(self, request: urllib.request.Request | str) -> bytes:
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise HistoryError("the daemon refused the token: check the Token field or ACE_BRIDGE_TOKEN") from None
            if exc.code == 404:
                raise HistoryError("the daemon has no such result (it may have been deleted)") from None
            raise HistoryError(f"the daemon's history answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HistoryError(
                f"cannot reach the daemon at {self.base} ({reason}): is `ace-bridge serve` running?"
            ) from None

    def _sign_in(self) -> None:
        if self._signed_in:
            return
        try:
            path = auth.panel_code(self.base, self.token, self.timeout)
        except auth.PanelUnauthorized:
            raise HistoryError(
                f"the daemon at {self.base} refused the token, or another program took its port (it did not prove "
                "it holds the token, so nothing secret was sent to it): check the Token field or ACE_BRIDGE_TOKEN"
            ) from None
        except auth.PanelCodeError as exc:
            raise HistoryError(f"cannot read the daemon's history: {exc}") from None
        self._open(self.base + path)  # the one-time code becomes this reader's session cookie
        self._signed_in = True

    def entries(self, limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` results, newest first (the panel's entry views: entry, task, prompt, seed, label...)."""
        self._sign_in()
        page = _json(self._open(f"{self.base}/panel/api/history?offset=0&limit={int(limit)}"))
        return [e for e in page.get("entries") or [] if isinstance(e, dict) and _ENTRY_RE.match(str(e.get("entry")))]

    def meta(self, entry: str) -> dict[str, Any]:
        """The stored record of one result (its provenance under `provenance`)."""
        self._sign_in()
        return _json(self._open(f"{self.base}/panel/api/meta/{_checked(entry)}"))

    def image(self, entry: str) -> bytes:
        """The result's pixels as the PNG the daemon stored."""
        self._sign_in()
        data = self._open(f"{self.base}/panel/api/image/{_checked(entry)}")
        if not data.startswith(b"\x89PNG"):
            raise HistoryError(f"the daemon's result {entry} is not a PNG")
        return data


def _checked(entry: str) -> str:
    if not _ENTRY_RE.match(str(entry)):
        raise HistoryError(f"'{entry}' is not a history entry name")
    return str(entry)


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise HistoryError("the daemon's history answered something that is not JSON") from None
    if not isinstance(value, dict):
        raise HistoryError("the daemon's history answered something that is not a JSON object")
    return value


def resolve_endpoint(url: str = "", token: str = "") -> tuple[str, str]:
    """The daemon's URL and token as the plug-in's connection would find them (settings, environment, runtime.json,
    the token file)."""
    from .protocol import discovery

    endpoint = discovery.resolve(url or None, token or None)
    return endpoint.url, endpoint.token or ""
