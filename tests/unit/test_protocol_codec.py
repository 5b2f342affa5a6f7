"""The wire form: every message survives a round trip, and no bytes a peer can send escape as anything but a
typed ProtocolError."""

from __future__ import annotations

import msgpack
import pytest
from ace_protocol.codec import decode_client_message, decode_map, decode_server_message, encode
from ace_protocol.errors import ErrorCode, ProtocolError
from ace_protocol.images import ImagePayload
from ace_protocol.messages import (
    Accepted,
    Ack,
    Cancel,
    Cancelled,
    Done,
    Error,
    Failed,
    Hello,
    Progress,
    Queued,
    Result,
    Started,
    StatusReply,
    StatusRequest,
    Submit,
    Welcome,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PIXEL = ImagePayload(2, 1, "rgba8", bytes(range(8)))
MASK = ImagePayload(2, 1, "gray8", b"\x00\xff")

CLIENT = [
    Hello(
        client_id="krita-1",
        client_name="ace-bridge-krita",
        client_version="0.1",
        protocol_versions=[1],
        editor="krita 5.2",
        token="t",
        session="s",
    ),
    Submit(
        id="r1",
        task="inpaint",
        prompt="a red hat",
        image=PIXEL,
        mask=MASK,
        references=[PIXEL],
        params={"seed": 3, "steps": 4},
        label="doc",
    ),
    Cancel(job_id="j", id="r2"),
    Ack(job_ids=["a", "b"]),
    StatusRequest(id="r3"),
]
SERVER = [
    Welcome(
        server_version="0.1",
        protocol_version=1,
        session="s",
        limits={"max_pixels": 4},
        engine={"state": "x"},
        tasks=[{"name": "inpaint"}],
        resumed=True,
        pending=["j"],
        id="h",
    ),
    Accepted(id="r1", job_id="j", position=2, seed=9),
    Queued(job_id="j", position=1),
    Started(job_id="j"),
    Progress(job_id="j", step=3, total=28, eta_s=1.5, image_index=0, preview=PIXEL),
    Result(job_id="j", index=0, count=1, seed=9, image=PIXEL, provenance={"task": "inpaint"}, region=[1, 2, 3, 4]),
    Done(job_id="j"),
    Failed(code="bad_request", message="no", job_id="j", id="r1"),
    Cancelled(job_id="j"),
    StatusReply(engine={"state": "loaded"}, queue=[{"job_id": "j"}], paused=True, id="r4"),
    Error(code="unauthorized", message="wrong token"),
]


@pytest.mark.parametrize("message", CLIENT, ids=lambda m: m.TYPE)
def test_client_messages_round_trip(message):
    assert decode_client_message(encode(message)) == message


@pytest.mark.parametrize("message", SERVER, ids=lambda m: m.TYPE)
def test_server_messages_round_trip(message):
    assert decode_server_message(encode(message)) == message


def test_the_wire_form_is_pinned():
    wire = msgpack.unpackb(encode(CLIENT[1]), raw=False)
    assert wire == {
        "type": "submit",
        "id": "r1",
        "task": "inpaint",
        "prompt": "a red hat",
        "image": {"w": 2, "h": 1, "format": "rgba8", "data": bytes(range(8))},
        "mask": {"w": 2, "h": 1, "format": "gray8", "data": b"\x00\xff"},
        "references": [{"w": 2, "h": 1, "format": "rgba8", "data": bytes(range(8))}],
        "params": {"seed": 3, "steps": 4},
        "label": "doc",
    }
    assert isinstance(wire["image"]["data"], bytes)  # bin, not str: no base64 anywhere


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        ({"type": "submit", "id": "1"}, "task"),
        ({"type": "submit", "id": "1", "task": 3}, "must be a string"),
        (
            {"type": "submit", "id": "1", "task": "x", "image": {"w": 2, "h": 2, "format": "rgba8", "data": b"123"}},
            "carries 3",
        ),
        (
            {"type": "submit", "id": "1", "task": "x", "image": {"w": 0, "h": 2, "format": "rgba8", "data": b""}},
            "at least 1",
        ),
        ({"type": "submit", "id": "1", "task": "x", "prompt": "x" * 5000}, "limit is 4000"),
        (
            {"type": "submit", "id": "1", "task": "x", "image": {"w": 100000, "h": 1, "format": "png", "data": b"x"}},
            "limit",
        ),
        ({"type": "cancel"}, "job_id"),
        ({"type": "launch-missiles"}, "unknown message type"),
        ({"kind": "hello"}, "'type'"),
    ],
)
def test_malformed_messages_name_what_is_wrong(wire, words):
    with pytest.raises(ProtocolError) as error:
        decode_client_message(msgpack.packb(wire, use_bin_type=True))
    assert words in error.value.message


def test_huge_and_deep_structures_are_refused_cheaply():
    deep = b"\x91" * 100_000 + b"\xc0"  # 100,000 nested one-element arrays
    with pytest.raises(ProtocolError):
        decode_map(deep)
    wide = msgpack.packb({"type": "ack", "job_ids": ["x"] * 20_000})
    with pytest.raises(ProtocolError):
        decode_client_message(wide)
    with pytest.raises(ProtocolError) as too_big:
        decode_map(b"\x80" * 100, max_frame_bytes=10)
    assert too_big.value.code is ErrorCode.TOO_LARGE


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_protocol_errors(data):
    for decode in (decode_client_message, decode_server_message):
        try:
            decode(data)
        except ProtocolError:
            pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
message_types = st.sampled_from(
    ["hello", "submit", "cancel", "ack", "status", "welcome", "result", "progress", "failed", "accepted", "bogus"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message_types,
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "task",
                "prompt",
                "image",
                "mask",
                "references",
                "params",
                "client_id",
                "client_name",
                "client_version",
                "protocol_versions",
                "token",
                "job_id",
                "job_ids",
                "code",
                "message",
                "step",
                "total",
                "index",
                "count",
                "seed",
                "provenance",
                "session",
                "limits",
                "engine",
                "tasks",
                "position",
            ]
        ),
        msgpack_values,
        max_size=10,
    ),
)
def test_arbitrary_maps_only_ever_raise_protocol_errors(kind, fields):
    data = msgpack.packb({"type": kind, **fields}, use_bin_type=True)
    for decode in (decode_client_message, decode_server_message):
        try:
            decode(data)
        except ProtocolError:
            pass
