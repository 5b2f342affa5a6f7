"""docs/protocol.md against the daemon, read from the document's own tables (issue 20).

An independent client written only from the document once found 13 places where it and the daemon disagreed.
These tests parse the tables of docs/protocol.md and check every row against a real daemon over real sockets (or,
for the message tables, against `ace_protocol.messages`), so the two cannot drift apart again: a row added to the
document fails here until it is either checked (a probe below) or listed in SKIPPED_ROWS with a reason and the test
that covers it elsewhere.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import msgpack
import pytest
from ace_protocol.codec import decode_server_message, encode
from ace_protocol.errors import ErrorCode
from ace_protocol.messages import CLIENT_MESSAGES, MAX_TEXT_CHARS, SERVER_MESSAGES, Message, StatusRequest
from adversarial_helpers import hello, protocol_1_hello, raw_upgrade, raw_ws, welcomed_ws, ws_handshake
from daemon_fixture import REPO

DOC = REPO / "docs" / "protocol.md"

# Rows no probe here checks, keyed by (table, start of the row's first cell): why, and which test covers them.
SKIPPED_ROWS: dict[tuple[str, str], str] = {
    ("handshake", "this principal is throttled"): (
        "programs of the daemon's own user are never throttled, so it needs a second user: "
        "tests/adversarial/test_trust.py::test_rotating_loopback_addresses_and_parallel_connections_stay_under_the_"
        "documented_cap and ::test_a_flood_of_wrong_tokens_does_not_delay_the_right_one run it as `nobody`"
    ),
}


# ------------------------------------------------------------------ reading the document


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row; `\\|` inside a cell is a literal bar, not a separator."""
    inner = line.strip()[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def table_under(heading: str, nth: int = 0, doc: Path = DOC) -> list[list[str]]:
    """The body rows of the `nth` table below the heading whose text contains `heading` (before the next heading)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and heading in line), None)
    assert start is not None, f"docs/protocol.md has no heading containing {heading!r}"
    tables: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            current.append(_cells(line))
        else:
            current = None
    assert len(tables) > nth, f"no table number {nth} under {heading!r}"
    header, separator, *body = tables[nth]
    assert set(separator[0]) <= {"-", ":"}, f"table under {heading!r} has no header separator"
    return body


def _row_id(row: list[str]) -> str:
    return re.sub(r"\W+", "-", re.sub(r"`|\*\*", "", row[0]))[:48].strip("-")


def _probe_for(table: str, cell: str, probes: dict[str, Any]) -> Any:
    """The probe whose key starts this row's first cell, else the SKIPPED_ROWS reason; else the row is new."""
    plain = re.sub(r"`|\*\*", "", cell)
    for key, probe in probes.items():
        if plain.startswith(key):
            return probe
    for (skipped_table, key), reason in SKIPPED_ROWS.items():
        if skipped_table == table and plain.startswith(key):
            pytest.skip(reason)
    pytest.fail(
        f"docs/protocol.md table {table!r} has a row no test checks: {cell!r}. Add a probe to "
        f"{Path(__file__).name} or list it in SKIPPED_ROWS with the test that covers it"
    )


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


# ------------------------------------------------------------------ §3 HTTP checks before the upgrade


def _http(port: int, request_line: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """One hand-written request with any method (raw_upgrade sends GETs only)."""
    head = "\r\n".join([request_line, *(f"{k}: {v}" for k, v in headers.items())]) + "\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = data.split(b"\r\n", 1)[0].split()
    return (int(status[1]) if len(status) > 1 else 0), data


def _host(daemon) -> str:
    return f"127.0.0.1:{daemon.port}"


# Each probe sends a request that breaks exactly the check its row names; everything else is what an editor sends.
HTTP_PROBES: dict[str, Callable[[Any], tuple[int, bytes]]] = {
    "Host header missing": lambda d: raw_upgrade(d.port, None),
    "Host port part not digits, or host name not trusted": lambda d: raw_upgrade(d.port, "rebind.attacker.example"),
    "Sec-Fetch-Site is cross-site or same-site": lambda d: raw_upgrade(
        d.port, _host(d), {"Sec-Fetch-Site": "cross-site"}
    ),
    "Origin present and (null": lambda d: raw_upgrade(d.port, _host(d), {"Origin": "null"}),
    "Query string contains a token parameter": lambda d: raw_upgrade(d.port, _host(d), path="/v1/ws?token=x"),
    "POST with a form/text/plain content type": lambda d: _http(
        d.port,
        "POST /v1/health HTTP/1.1",
        {"Host": _host(d), "Content-Type": "text/plain", "Content-Length": "2", "Connection": "close"},
    ),
    # The daemon is told it listens beyond loopback (config.host), as `serve --host 0.0.0.0 --insecure` does; the
    # socket itself stays on 127.0.0.1 so the test reaches it. The real bind is tests/adversarial/
    # test_remote_mode.py::test_insecure_remote_mode_refuses_a_bearer_token_over_plain_http.
    "Authorization header on plain HTTP": lambda d: raw_upgrade(d.port, _host(d), {"Authorization": "Bearer x"}),
}

HTTP_ROWS = table_under("3. HTTP checks before the upgrade")


@pytest.mark.parametrize("row", HTTP_ROWS, ids=[_row_id(r) for r in HTTP_ROWS])
def test_each_http_check_refuses_with_the_documented_status(thread_daemon_factory, row):
    check, refused_with = row[0], row[1]
    probe = _probe_for("http", check, HTTP_PROBES)
    expected = re.search(r"HTTP (\d{3})", refused_with)
    assert expected, f"row {check!r}: no 'HTTP nnn' in {refused_with!r}"
    remote = "serve --insecure" in check
    daemon = thread_daemon_factory(host="0.0.0.0") if remote else thread_daemon_factory()
    status, answer = probe(daemon)
    assert status == int(expected.group(1)), f"{check!r}: documented {refused_with!r}, daemon answered {answer[:200]!r}"
    for word in re.findall(r'"error": "(\w+)"', refused_with):
        assert word.encode() in answer, f"{check!r}: the answer lacks the documented {word!r}: {answer[:300]!r}"
    # The same request without the violation gets through: the probe broke that check and nothing else.
    assert raw_upgrade(daemon.port, _host(daemon))[0] == 101


# ------------------------------------------------------------------ §5 message tables against messages.py

# Documented type → the field kinds of messages.py it stands for.
DOC_TYPES = {
    "str": {"str", "str?"},
    "int": {"int", "int?"},
    "float": {"float", "float?"},
    "bool": {"bool"},
    "map": {"map"},
    "list": {"list", "list[str]", "list[int]", "images"},
    "list[str]": {"list[str]"},
    "list[int]": {"list[int]"},
    "list[map]": {"list"},
    "list[image]": {"images"},
    "image": {"image", "image?"},
}
DOC_DEFAULTS = {"false": False, "true": True, '""': "", "[]": [], "{}": {}}


def _client_fields() -> dict[str, dict[str, list[str]]]:
    """{type: {field: [type, req, default/limit]}} from the "Client → daemon" table."""
    table: dict[str, dict[str, list[str]]] = {}
    current = ""
    for row in table_under("Client → daemon"):
        current = row[0].strip("`") or current
        table.setdefault(current, {})[row[1].strip("`")] = row[2:]
    return table


def _top_level_fields(cell: str) -> list[tuple[str, str]]:
    """`a`, `b` (int, …), `c` (str?) → [(a, ""), (b, "int"), (c, "str?")]: names outside parentheses, each with
    the type word its parenthesis starts with (if it starts with one)."""
    found: list[tuple[str, str]] = []
    depth = 0
    i = 0
    while i < len(cell):
        ch = cell[i]
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == "`" and depth == 0:
            end = cell.index("`", i + 1)
            name = cell[i + 1 : end]
            after = cell[end + 1 :].lstrip()
            kind = re.match(r"\(([a-z\[\]]+\??)[,)\s]", after)
            found.append((name, kind.group(1) if kind and kind.group(1).rstrip("?") in DOC_TYPES else ""))
            i = end
        i += 1
    return found


def _server_fields() -> dict[str, dict[str, str]]:
    """{type: {field: documented type or ""}} from the "Daemon → client" table, in either of its two row forms."""
    table: dict[str, dict[str, str]] = {}
    current = ""
    for row in table_under("Daemon → client"):
        current = row[0].strip("`") or current
        kind = row[2].strip("`")
        for name, inline in _top_level_fields(row[1]):
            table.setdefault(current, {})[name] = kind if kind.rstrip("?") in DOC_TYPES else inline
        table.setdefault(current, {})
    return table


def _field_specs(message: type[Message]) -> dict[str, Any]:
    return {f.name: f for f in fields(message)}  # type: ignore[arg-type]


def test_every_message_type_is_documented_in_its_direction_and_no_other():
    documented_client, documented_server = set(_client_fields()), set(_server_fields())
    assert documented_client == set(CLIENT_MESSAGES), (
        f"client → daemon: documented only {sorted(documented_client - set(CLIENT_MESSAGES))}, "
        f"in messages.py only {sorted(set(CLIENT_MESSAGES) - documented_client)}"
    )
    assert documented_server == set(SERVER_MESSAGES), (
        f"daemon → client: documented only {sorted(documented_server - set(SERVER_MESSAGES))}, "
        f"in messages.py only {sorted(set(SERVER_MESSAGES) - documented_server)}"
    )


@pytest.mark.parametrize("type_", sorted(CLIENT_MESSAGES))
def test_client_message_fields_match_the_document(type_):
    documented = _client_fields().get(type_, {})
    specs = _field_specs(CLIENT_MESSAGES[type_])
    assert set(documented) == set(specs), (
        f"{type_}: documented only {sorted(set(documented) - set(specs))}, "
        f"in messages.py only {sorted(set(specs) - set(documented))}"
    )
    for name, (doc_type, req, default_limit) in documented.items():
        spec = specs[name]
        kind = spec.metadata["kind"]
        where = f"{type_}.{name}"
        assert kind in DOC_TYPES[doc_type], f"{where}: documented as {doc_type}, messages.py has kind {kind}"
        required = spec.default is MISSING and spec.default_factory is MISSING
        assert required == (req == "yes"), f"{where}: documented req={req}, messages.py required={required}"
        if not required:
            default = spec.default_factory() if spec.default is MISSING else spec.default
            first = _backticked(default_limit)[:1]
            if first and first[0] in DOC_DEFAULTS:
                assert default == DOC_DEFAULTS[first[0]], f"{where}: documented default {first[0]}, code {default!r}"
        limit = re.match(r'(?:`""`, )?≤ (\d+)', default_limit)
        if limit and kind in ("str", "str?"):
            code_limit = spec.metadata.get("max_len") or MAX_TEXT_CHARS
            assert code_limit == int(limit.group(1)), f"{where}: documented ≤ {limit.group(1)}, code {code_limit}"


@pytest.mark.parametrize("type_", sorted(SERVER_MESSAGES))
def test_daemon_message_fields_match_the_document(type_):
    documented = _server_fields().get(type_, {})
    specs = _field_specs(SERVER_MESSAGES[type_])
    assert set(documented) == set(specs), (
        f"{type_}: documented only {sorted(set(documented) - set(specs))}, "
        f"in messages.py only {sorted(set(specs) - set(documented))}"
    )
    for name, doc_type in documented.items():
        if not doc_type:
            continue
        spec = specs[name]
        kind = spec.metadata["kind"]
        where = f"{type_}.{name}"
        assert kind in DOC_TYPES[doc_type.rstrip("?")], f"{where}: documented as {doc_type}, messages.py has {kind}"
        if doc_type.endswith("?"):
            assert spec.default is None, f"{where}: documented optional ({doc_type}), messages.py requires it"


# ------------------------------------------------------------------ §7 "Other requests and bad frames"


def _expect(reply: Message, type_: str, code: str | None = None, id_: str | None = None) -> None:
    wire = reply.to_wire()
    assert reply.TYPE == type_, f"expected {type_}, got {wire}"
    if code is not None:
        assert wire.get("code") == code, f"expected code {code}, got {wire}"
    assert wire.get("id") == id_, f"expected id {id_!r} echoed, got {wire}"


def _reply(ws) -> Message:
    return decode_server_message(ws.recv(timeout=30))


def _documented_reply(cell: str) -> tuple[str, str | None]:
    """`error{bad_request, …}` → ("error", "bad_request"); `status_reply{engine, …}` → ("status_reply", None)."""
    match = re.search(r"`(\w+)\{(\w+)?", cell)
    assert match, f"no reply named in {cell!r}"
    code = match.group(2)
    return match.group(1), code if code in {c.value for c in ErrorCode} else None


def _status_probe(ws, daemon, reply_cell, monkeypatch):
    ws.send(encode(StatusRequest(id="s1")))
    type_, _ = _documented_reply(reply_cell)
    _expect(_reply(ws), type_, id_="s1")


def _text_frame_probe(ws, daemon, reply_cell, monkeypatch):
    type_, code = _documented_reply(reply_cell)
    message = re.search(r'"([^"]+)"', reply_cell)
    ws.send("a text frame")
    reply = _reply(ws)
    _expect(reply, type_, code)
    assert message and reply.to_wire()["message"] == message.group(1)
    if "connection stays open" in reply_cell:
        _status_probe(ws, daemon, "`status_reply{`", monkeypatch)


def _bad_frames_probe(ws, daemon, reply_cell, monkeypatch):
    assert "`failed{code, message, id}`" in reply_cell and "`error{code, message, id}`" in reply_cell, reply_cell
    trailing = msgpack.packb({"type": "submit", "id": "t1", "task": "inpaint"}) + b"\x00"
    too_deep = msgpack.packb({"type": "cancel", "id": "t2", "job_id": [[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]})
    cases = [
        # (frame, the documented reply: type, code, id)
        (msgpack.packb({"type": "submit", "id": "v1", "task": 7}), ("failed", "bad_request", "v1")),
        (msgpack.packb({"type": "cancel", "id": "v2"}), ("error", "bad_request", "v2")),
        (msgpack.packb({"type": "no_such_type", "id": "v3"}), ("error", "bad_request", "v3")),
        (trailing, ("failed", "bad_request", "t1")),
        (too_deep, ("error", "bad_request", "t2")),
        (msgpack.packb({"type": "cancel", "id": "x" * 129}), ("error", "bad_request", None)),
        (b"\xc1 not msgpack", ("error", "bad_request", None)),
    ]
    for frame, (type_, code, id_) in cases:
        ws.send(frame)
        _expect(_reply(ws), type_, code, id_)


def _failing_request_probe(ws, daemon, reply_cell, monkeypatch):
    assert "`submit` → `failed{id,…}`" in reply_cell and "others → `error{id,…}`" in reply_cell, reply_cell
    ws.send(encode(CLIENT_MESSAGES["submit"].from_wire({"id": "f1", "task": "no_such_task"})))
    _expect(_reply(ws), "failed", "unknown_task", "f1")
    ws.send(encode(CLIENT_MESSAGES["cancel"].from_wire({"id": "f2", "job_id": "0" * 32})))
    _expect(_reply(ws), "error", "bad_request", "f2")
    assert "unexpected crash → `error{internal}`" in reply_cell, reply_cell
    from bridge_server.server import sessions

    real_dispatch = sessions._dispatch

    async def crashing(state, session, connection, message):
        if getattr(message, "id", None) == "crash":  # a bug in the daemon, not in the request
            raise RuntimeError("a daemon bug")
        return await real_dispatch(state, session, connection, message)

    monkeypatch.setattr(sessions, "_dispatch", crashing)
    ws.send(encode(StatusRequest(id="crash")))
    _expect(_reply(ws), "error", "internal", "crash")
    ws.send(encode(StatusRequest(id="after")))  # and the connection goes on
    _expect(_reply(ws), "status_reply", id_="after")


def _too_big_frame_probe(ws, daemon, reply_cell, monkeypatch):
    from websockets.exceptions import ConnectionClosed

    close = re.search(r"close (\d{4}), reason `(\w+)`", reply_cell)
    assert close, reply_cell
    ws.send(b"\x00" * (daemon.config.max_frame_bytes + 1))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (int(close.group(1)), close.group(2))


AFTER_HANDSHAKE_PROBES = {
    "status": _status_probe,
    "text frame": _text_frame_probe,
    "undecodable frame / failed validation": _bad_frames_probe,
    "request that fails in the daemon": _failing_request_probe,
    "frame > max_frame_bytes": _too_big_frame_probe,
}
AFTER_HANDSHAKE_ROWS = table_under("Other requests and bad frames")


@pytest.mark.parametrize("row", AFTER_HANDSHAKE_ROWS, ids=[_row_id(r) for r in AFTER_HANDSHAKE_ROWS])
def test_each_request_and_bad_frame_after_the_handshake_gets_the_documented_reply(
    thread_daemon_factory, monkeypatch, row
):
    probe = _probe_for("after handshake", row[0], AFTER_HANDSHAKE_PROBES)
    daemon = thread_daemon_factory(max_frame_bytes=1 << 20)  # a small limit keeps the too-big frame cheap
    with welcomed_ws(daemon, "conformance") as ws:
        probe(ws, daemon, row[1], monkeypatch)


# ------------------------------------------------------------------ §4 handshake failures


def _silent(ws, daemon, monkeypatch):
    from bridge_server.server import sessions

    monkeypatch.setattr(sessions, "HELLO_TIMEOUT_S", 0.5)  # the documented 15 s, shortened for the test
    return None


def _text_first(ws, daemon, monkeypatch):
    ws.send("hello")


def _invalid_hello(ws, daemon, monkeypatch):
    ws.send(msgpack.packb({"type": "hello", "id": "h1", "client_name": "no client_id"}))


def _not_hello(ws, daemon, monkeypatch):
    ws.send(encode(StatusRequest(id="h1")))


def _wrong_token(ws, daemon, monkeypatch):
    return ws_handshake(ws, "ace_wrong", "wrong-token", check_server=False, id="h1")


def _held_client_id(ws, daemon, monkeypatch):
    with welcomed_ws(daemon, "holder") as first:
        first.close()
    return ws_handshake(ws, daemon.token, "holder", id="h1")


def _old_plugin(ws, daemon, monkeypatch):
    ws.send(encode(protocol_1_hello(daemon.token, id="h1")))


def _over_64_kib(ws, daemon, monkeypatch):
    ws.send(encode(hello(daemon.token)) + b"\x00" * 70_000)


HANDSHAKE_PROBES = {
    "no frame within 15 s": _silent,
    "first frame is text": _text_first,
    "first frame undecodable / invalid hello": _invalid_hello,
    "first frame over 64 KiB": _over_64_kib,
    "first frame is not hello": _not_hello,
    "wrong or missing token": _wrong_token,
    "client_id held by another client": _held_client_id,
    "2 not in protocol_versions": _old_plugin,
}
HANDSHAKE_ROWS = table_under("Steps after the proof")


@pytest.mark.parametrize("row", HANDSHAKE_ROWS, ids=[_row_id(r) for r in HANDSHAKE_ROWS])
def test_each_handshake_failure_sends_one_error_and_the_documented_close(thread_daemon_factory, monkeypatch, row):
    from websockets.exceptions import ConnectionClosed

    condition, code_cell, close_cell = row
    probe = _probe_for("handshake", condition, HANDSHAKE_PROBES)
    codes = [c for c in _backticked(code_cell) if c in {e.value for e in ErrorCode}]
    assert codes, f"row {condition!r} names no error code: {code_cell!r}"
    daemon = thread_daemon_factory()
    with raw_ws(daemon) as ws:
        reply = probe(ws, daemon, monkeypatch)
        if "64 KiB" not in condition:  # the one refusal that closes without an error frame
            reply = reply or _reply(ws)
            assert reply.TYPE == "error" and reply.to_wire()["code"] in codes, f"{condition!r}: got {reply}"
            assert getattr(reply, "id", None) is None, f"{condition!r}: a handshake error carries no id: {reply}"
            if "update the plugin" in condition:
                assert reply.to_wire()["message"].startswith("update the plugin:")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=30)
    rcvd = closed.value.rcvd
    assert rcvd is not None, f"{condition!r}: the daemon did not close"
    assert rcvd.code == int(close_cell), f"{condition!r}: close code {rcvd.code}, documented {close_cell}"
    assert rcvd.reason in codes, f"{condition!r}: close reason {rcvd.reason!r}, documented {codes}"


# ------------------------------------------------------------------ §9 error codes


def test_the_error_code_table_lists_exactly_the_codes_the_daemon_has():
    documented = [_backticked(row[0])[0] for row in table_under("9. Error codes")]
    assert len(documented) == len(set(documented)), f"a code is listed twice: {documented}"
    in_code = {code.value for code in ErrorCode}
    assert set(documented) == in_code, (
        f"documented only {sorted(set(documented) - in_code)}, in ace_protocol.errors only "
        f"{sorted(in_code - set(documented))}"
    )


def test_the_error_codes_of_handshake_failures_are_the_ones_section_9_names():
    """§4's failures and §9's "When" column say the same: each code §4 closes a handshake with is, in §9, a code
    sent "at the handshake" / "connection closed"."""
    when = {_backticked(row[0])[0]: row[1] for row in table_under("9. Error codes")}
    for condition, code_cell, _close in HANDSHAKE_ROWS:
        for code in _backticked(code_cell):
            if code in when and code != "bad_request":
                assert any(w in when[code] for w in ("connection closed", "handshake", "before `welcome`")), (
                    f"§4 closes the handshake with {code} ({condition!r}); §9 says it is sent: {when[code]!r}"
                )


# ------------------------------------------------------------------ §6 image checks


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (width, height), (200, 30, 30, 255)).save(out, "PNG")
    return out.getvalue()


def _raw(w: Any, h: Any, fmt: str = "rgba8", data: Any = None) -> dict[str, Any]:
    if data is None:
        data = b"\x80" * (int(w) * int(h) * (1 if fmt == "gray8" else 4))
    return {"w": w, "h": h, "format": fmt, "data": data}


SMALL_MAX_PIXELS = 64 * 64  # the daemon below announces this `limits.max_pixels`, so oversized images stay small

# One image per condition the row lists, in the row's order.
IMAGE_PROBES: dict[str, list[dict[str, Any]]] = {
    "w/h not integers, unknown format, data not bin, raw byte count wrong, encoded data empty, w or h < 1": [
        _raw("8", 8, data=b"\x80" * 256),
        _raw(8, 8, "tiff", data=b"\x80" * 256),
        _raw(8, 8, data="not bin"),
        _raw(8, 8, data=b"\x80" * 255),
        _raw(8, 8, "png", data=b""),
        _raw(0, 8, data=b""),
    ],
    "w or h > 16384, or w*h > limits.max_pixels": [
        _raw(16385, 1, "gray8"),
        _raw(65, 65, "gray8"),
    ],
    "encoded file decodes larger than max_pixels, or is a decompression bomb": [
        _raw(16, 16, "png", data=_png(65, 65)),
    ],
    "encoded file header size ≠ w×h, or file unreadable/corrupt": [
        _raw(16, 16, "png", data=_png(17, 16)),
        _raw(16, 16, "png", data=b"\x89PNG\r\n\x1a\n not a png"),
    ],
}
IMAGE_ROWS = table_under("6. Images", nth=1)


@pytest.mark.parametrize("row", IMAGE_ROWS, ids=[_row_id(r) for r in IMAGE_ROWS])
def test_each_image_check_refuses_the_submit_with_the_documented_code(thread_daemon_factory, row):
    check, code_cell = row
    images = _probe_for("images", check, IMAGE_PROBES)
    (code,) = _backticked(code_cell)
    daemon = thread_daemon_factory(max_pixels=SMALL_MAX_PIXELS)
    with welcomed_ws(daemon, "images") as ws:
        for i, image in enumerate(images):
            ws.send(msgpack.packb({"type": "submit", "id": f"img{i}", "task": "inpaint", "image": image}))
            reply = _reply(ws)
            assert (reply.TYPE, reply.to_wire().get("code"), reply.to_wire().get("id")) == (
                "failed",
                code,
                f"img{i}",
            ), (
                f"{check!r}, image {i} ({ {k: v for k, v in image.items() if k != 'data'} }): documented {code}, "
                f"daemon answered {reply.to_wire()}"
            )


# ------------------------------------------------------------------ §7 submit validation


def _submit(task: str = "inpaint", **fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "submit", "id": "v", "task": task}
    if task in ("inpaint", "instruct", "local_edit", "reference_edit"):
        frame["image"] = _raw(32, 32)
    return {**frame, **fields}


# Each submit breaks its row's check and passes every check before it (the table's order: first failure wins).
SUBMIT_PROBES: dict[str, list[dict[str, Any]]] = {
    "frame decodes": [
        _submit(task=7),
        _submit(prompt="x" * (MAX_TEXT_CHARS + 1)),
        _submit(references=[_raw(8, 8)] * 5),
    ],
    "task is a known task name": [_submit("no_such_task")],
    "the task's model files are installed": [_submit("generate")],  # on a daemon without model files (below)
    "every params key is a parameter of the task": [
        _submit(params={"no_such_param": 1}),
        _submit(params={"steps": 0}),
        _submit(params={"steps": 1.5}),
        _submit("generate", params={"repainting_scale": 0.5}),
    ],
    "max_tokens ≤ limits.max_tokens": [_submit(params={"max_tokens": 8192})],  # the daemon below allows 4096
    "needs_image tasks have an image": [{"type": "submit", "id": "v", "task": "inpaint"}],
    "subject, portrait, generate have no image": [
        _submit("generate", image=_raw(32, 32)),
        _submit("subject", image=_raw(32, 32), references=[_raw(32, 32)]),
    ],
    "min_references ≤ len(references) ≤ max_references": [
        _submit("reference_edit"),
        _submit("local_edit", references=[_raw(32, 32)] * 2),
    ],
    "a mask needs an image; mask w×h = image w×h": [
        _submit("generate", mask=_raw(32, 32, "gray8")),
        _submit(mask=_raw(16, 16, "gray8")),
    ],
    "encoded images decode": [_submit(image=_raw(32, 32, "png", data=b"\x89PNG\r\n\x1a\n broken"))],
    "queue room": [_submit(id=f"q{i}", params={"steps": 1}) for i in range(3)],  # the daemon below queues 2 each
}
SUBMIT_ROWS = table_under("Submit validation")


@pytest.mark.parametrize("row", SUBMIT_ROWS, ids=[_row_id(r[1:]) for r in SUBMIT_ROWS])
def test_each_submit_check_refuses_with_the_documented_code(thread_daemon_factory, tmp_path, row):
    from daemon_fixture import tiny_engine_factory

    from bridge_server.jobs.gate import Gate

    _number, check, code_cell = row
    frames = _probe_for("submit validation", check, SUBMIT_PROBES)
    codes = _backticked(code_cell)
    overrides: dict[str, Any] = {"max_tokens_limit": 4096, "max_queued_per_client": 2, "gate": Gate(paused=True)}
    if "model files" in check:
        overrides["engine_factory"] = tiny_engine_factory(tmp_path / "no-model-files")
    daemon = thread_daemon_factory(**overrides)
    with welcomed_ws(daemon, "validation") as ws:
        if check.startswith("queue room"):
            *fill, frames = frames[:-1], frames[-1:]
            for frame in fill[0]:
                ws.send(msgpack.packb(frame))
                assert _reply(ws).TYPE == "accepted"
        for frame in frames:
            ws.send(msgpack.packb(frame))
            wire = _reply(ws).to_wire()
            shown = {k: v for k, v in frame.items() if k != "image"}
            assert wire["type"] == "failed" and wire["code"] in codes and wire["id"] == frame["id"], (
                f"{check!r}: {shown} documented {codes}, daemon answered {wire}"
            )
            assert "job_id" not in wire, f"a refused submit has no job: {wire}"
