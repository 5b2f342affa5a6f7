"""ace_protocol.wsmask: sliced masking gives websockets' own bytes, only on this client's connections, and
leaves websockets itself untouched (Krita runs every plug-in in one interpreter)."""

from __future__ import annotations

import os

import pytest
from ace_protocol import wsmask
from websockets import frames
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Protocol, Side
from websockets.sync.client import ClientConnection
from websockets.uri import parse_uri
from websockets.utils import apply_mask


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 4096, 65535, 65536, 65537, 3 * 65536 + 7])
def test_same_bytes_as_websockets(size):
    data, mask = os.urandom(size), os.urandom(4)
    assert bytes(wsmask.apply_mask_chunked(data, mask)) == apply_mask(data, mask)
    assert bytes(wsmask.apply_mask_chunked(bytearray(data), mask)) == apply_mask(data, mask)
    assert bytes(wsmask.apply_mask_chunked(memoryview(data), mask)) == apply_mask(data, mask)


def test_bad_mask():
    with pytest.raises(ValueError):
        wsmask.apply_mask_chunked(b"abcd", b"abc")


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70_000])
def test_a_masked_frame_reads_back_on_the_server_side(size):
    data = os.urandom(size)
    wire = bytes(wsmask.masked_frame_bytes(Frame(Opcode.BINARY, data)))
    header = 2 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert len(wire) == header + 4 + size and wire[1] & 0x80  # the mask bit, then the 4-byte key
    assert apply_mask(wire[header + 4 :], wire[header : header + 4]) == data


def test_only_the_connections_it_is_given_to_mask_in_slices():
    before = frames.apply_mask
    client = ClientProtocol(parse_uri("ws://localhost/v1/ws"))
    plain = ClientProtocol(parse_uri("ws://localhost/v1/ws"))
    wsmask.use_sliced_masking(client)
    assert "send_frame" in vars(client) and "send_frame" not in vars(plain)
    assert frames.apply_mask is before and ClientProtocol.send_frame is not client.send_frame
    # What the sliced client writes, websockets' own server protocol reads as the same message.
    server = Protocol(Side.SERVER, state=OPEN)
    client.state = OPEN
    payload = os.urandom(200_000)
    client.send_binary(payload)
    server.receive_data(b"".join(bytes(chunk) for chunk in client.data_to_send()))
    [event] = server.events_received()
    assert event.opcode == Opcode.BINARY and event.data == payload


def test_connection_class_is_websockets_own_when_the_c_speedup_is_loaded(monkeypatch):
    wsmask.connection_class.cache_clear()
    monkeypatch.setattr(wsmask, "has_c_speedup", lambda: True)
    assert wsmask.connection_class(ClientConnection) is ClientConnection
    wsmask.connection_class.cache_clear()
    monkeypatch.setattr(wsmask, "has_c_speedup", lambda: False)
    sliced = wsmask.connection_class(ClientConnection)
    assert issubclass(sliced, ClientConnection) and sliced is not ClientConnection
    wsmask.connection_class.cache_clear()
