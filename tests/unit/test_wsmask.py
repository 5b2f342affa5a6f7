"""ace_protocol.wsmask: the chunked pure-Python WebSocket masking gives websockets' own bytes."""

from __future__ import annotations

import os

import pytest
from ace_protocol import wsmask
from websockets import frames
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


def test_install_only_without_the_c_speedup(monkeypatch):
    monkeypatch.setattr(frames, "apply_mask", apply_mask)  # pure Python, as in the editors' vendored copy
    assert wsmask.install() is True
    assert frames.apply_mask is wsmask.apply_mask_chunked
    data = os.urandom(70_000)
    wire = frames.Frame(frames.Opcode.BINARY, data).serialize(mask=True)
    assert len(wire) == 2 + 8 + 4 + len(data)  # 64-bit length, then the 4-byte key
    assert apply_mask(wire[14:], wire[10:14]) == data
    monkeypatch.setattr(frames, "apply_mask", type("C", (), {"__module__": "websockets.speedups"})())
    assert wsmask.install() is False
