"""Faster pure-Python WebSocket masking, for this client's own connections only.

RFC 6455 makes a client XOR every byte it sends with a 4-byte key. Without websockets' C speed-up (the plug-ins
vendor pure-Python copies) `websockets.utils.apply_mask` does it as one big-integer XOR over the whole payload:
~290 ms for the 84 MB frame of a 4096x4096 region (bench/plugin_side.py). The same XOR over 64 KiB slices, with
the repeated key converted once, stays in the CPU cache and takes about half that.

`connection_class()` gives the `create_connection` class that `BridgeClient` opens its connections with: each
such connection's protocol object masks in slices. websockets itself is left alone (no module attribute is
replaced), so other users of websockets in the same interpreter (Krita runs every plug-in in one) see no change.
The bytes on the wire are the ones websockets would write.
"""

from __future__ import annotations

import functools
import secrets
import struct
import sys
from typing import Any, TypeVar

from .bundled import websockets_module

_CHUNK = 1 << 16  # a multiple of 4, so every slice starts at key offset 0
C = TypeVar("C")


def apply_mask_chunked(data: Any, mask: bytes | bytearray) -> bytes | bytearray:
    """XOR `data` with the repeating 4-byte `mask` (same result as websockets.utils.apply_mask)."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    out = bytearray(len(view))
    mask_into(out, 0, view, mask)
    return out


def mask_into(out: bytearray, offset: int, data: Any, mask: bytes | bytearray) -> None:
    """Write `data` XOR the repeating `mask` into `out[offset:]`, 64 KiB at a time."""
    if len(mask) != 4:
        raise ValueError("mask must contain 4 bytes")
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    n = len(view)
    order = sys.byteorder
    from_bytes = int.from_bytes
    key_int = from_bytes(mask * (_CHUNK // 4), order)
    full = n - n % _CHUNK
    for i in range(0, full, _CHUNK):
        out[offset + i : offset + i + _CHUNK] = (from_bytes(view[i : i + _CHUNK], order) ^ key_int).to_bytes(
            _CHUNK, order
        )
    if full < n:
        rest = n - full
        key = mask * (rest // 4) + mask[: rest % 4]
        out[offset + full : offset + n] = (from_bytes(view[full:], order) ^ from_bytes(key, order)).to_bytes(
            rest, order
        )


def masked_frame_bytes(frame: Any, extensions: Any = ()) -> bytearray:
    """A client frame as `Frame.serialize(mask=True)` writes it, with the payload masked by `mask_into`."""
    frame.check()
    for extension in extensions or ():
        frame = extension.encode(frame)
    head1 = (
        (0x80 if frame.fin else 0)
        | (0x40 if frame.rsv1 else 0)
        | (0x20 if frame.rsv2 else 0)
        | (0x10 if frame.rsv3 else 0)
        | int(frame.opcode)
    )
    data = frame.data
    length = len(data)
    if length < 126:
        header = struct.pack("!BB", head1, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", head1, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", head1, 0x80 | 127, length)
    mask = secrets.token_bytes(4)
    start = len(header) + 4
    out = bytearray(start + length)
    out[:start] = header + mask
    mask_into(out, start, data, mask)
    return out


def _send_frame_masked_in_slices(protocol: Any, frame: Any) -> None:
    """`Protocol.send_frame` of a client, with `masked_frame_bytes` doing the masking."""
    if protocol.debug:
        protocol.logger.debug("> %s", frame)
    protocol.writes.append(masked_frame_bytes(frame, protocol.extensions))


def use_sliced_masking(protocol: Any) -> None:
    """Make one websockets client protocol object mask in slices (an attribute of that object only)."""
    protocol.send_frame = functools.partial(_send_frame_masked_in_slices, protocol)


def has_c_speedup() -> bool:
    """Whether websockets masks with its C extension (then there is nothing to gain)."""
    apply_mask = getattr(websockets_module("frames"), "apply_mask", None)
    return getattr(apply_mask, "__module__", "").endswith(".speedups")


@functools.cache
def connection_class(base: type[C]) -> type[C]:
    """`base` (websockets' sync ClientConnection) when its C speed-up is loaded, else a subclass whose
    connections mask in slices; pass it to `websockets.sync.client.connect(create_connection=...)`."""
    if has_c_speedup():
        return base

    class SliceMaskedConnection(base):  # type: ignore[valid-type,misc]
        def __init__(self, socket: Any, protocol: Any, *args: Any, **kwargs: Any) -> None:
            use_sliced_masking(protocol)
            super().__init__(socket, protocol, *args, **kwargs)

    return SliceMaskedConnection
