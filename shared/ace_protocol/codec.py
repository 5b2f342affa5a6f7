"""msgpack framing: one map per binary frame. Decoding never raises anything but `ProtocolError`."""

from __future__ import annotations

import struct
from typing import Any

from .buffers import byte_view
from .bundled import msgpack
from .errors import ErrorCode, ProtocolError, bad_request
from .images import DEFAULT_MAX_PIXELS
from .messages import CLIENT_MESSAGES, SERVER_MESSAGES, Message

DEFAULT_MAX_FRAME_BYTES = 256 * 1024 * 1024
#: Structure caps: a legal frame has a handful of maps and short lists; these stop hostile allocations early.
_MAX_CONTAINER_LEN = 10_000


#: Binary values at least this big are not copied through msgpack's buffer (see `encode`).
_BIG_BIN = 64 * 1024


def encode(message: Message) -> bytes:
    """One frame. Frames carrying image pixels (submit, result) are assembled around the pixel buffers: msgpack
    packs only the small parts and each big binary is copied once, by the final join, instead of being copied into
    msgpack's growing buffer and then again into the returned bytes. The output is byte for byte what
    `msgpack.packb(wire, use_bin_type=True)` gives."""
    wire = message.to_wire()
    if not _has_big_bin(wire, 0):
        packed: bytes = msgpack.packb(wire, use_bin_type=True)
        return packed
    parts: list[Any] = []
    _pack_into(wire, parts)
    return b"".join(parts)


def encode_fragments(message: Message) -> list[Any]:
    """The frame of `encode`, as pieces to send as the fragments of one WebSocket message: the big binaries are
    views of the caller's buffers (not copied here), the small parts between them are joined. One piece when the
    message carries no big binary. Concatenated, the pieces are exactly `encode(message)`."""
    wire = message.to_wire()
    if not _has_big_bin(wire, 0):
        return [msgpack.packb(wire, use_bin_type=True)]
    parts: list[Any] = []
    _pack_into(wire, parts)
    pieces: list[Any] = []
    small: list[Any] = []
    for part in parts:
        if isinstance(part, memoryview) and part.nbytes >= _BIG_BIN:
            if small:
                pieces.append(b"".join(small))
                small = []
            pieces.append(part)
        else:
            small.append(part)
    if small:
        pieces.append(b"".join(small))
    return pieces


def _has_big_bin(value: Any, depth: int) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) >= _BIG_BIN  # len of a memoryview: use a cast("B") view, as ImagePayload users do
    if depth > 3:
        return False
    if isinstance(value, dict):
        return any(_has_big_bin(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_has_big_bin(v, depth + 1) for v in value)
    return False


def _pack_into(value: Any, parts: list[Any]) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)) and len(value) >= _BIG_BIN:
        view = byte_view(value)
        parts.append(struct.pack(">BI", 0xC6, view.nbytes))  # bin 32, as msgpack writes any bin of 64 KiB or more
        parts.append(view)
    elif isinstance(value, dict):
        n = len(value)
        parts.append(
            bytes((0x80 | n,)) if n < 16 else struct.pack(">BH", 0xDE, n) if n < 65536 else struct.pack(">BI", 0xDF, n)
        )
        for key, item in value.items():
            parts.append(msgpack.packb(key, use_bin_type=True))
            _pack_into(item, parts)
    elif isinstance(value, list):
        n = len(value)
        parts.append(
            bytes((0x90 | n,)) if n < 16 else struct.pack(">BH", 0xDC, n) if n < 65536 else struct.pack(">BI", 0xDD, n)
        )
        for item in value:
            _pack_into(item, parts)
    else:
        parts.append(msgpack.packb(value, use_bin_type=True))


def decode_map(data: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict[str, Any]:
    """Bytes -> the frame's map, with size and structure limits applied while unpacking."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_request("frames must be binary msgpack")
    if len(data) > max_frame_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes exceeds the limit of {max_frame_bytes}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=8 * 1024 * 1024,
            max_bin_len=max_frame_bytes,
            max_array_len=_MAX_CONTAINER_LEN,
            max_map_len=_MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise bad_request(f"frame is not a valid msgpack map ({type(exc).__name__})") from None
    except Exception as exc:  # msgpack raises a wide variety on hostile input; none may escape
        raise bad_request(f"frame could not be decoded ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise bad_request("a frame must be one msgpack map")
    if not isinstance(value.get("type"), str):
        raise bad_request("a frame needs a string field 'type'")
    return value


def _decode(data: bytes, table: dict[str, type[Message]], max_frame_bytes: int, max_pixels: int) -> Message:
    wire = decode_map(data, max_frame_bytes=max_frame_bytes)
    cls = table.get(wire["type"])
    if cls is None:
        raise bad_request(f"unknown message type {wire['type']!r:.40}")
    try:
        return cls.from_wire(wire, max_pixels=max_pixels)
    except ProtocolError:
        raise
    except Exception as exc:  # a validation gap must still surface as a typed error
        raise bad_request(f"malformed '{wire['type']}' message ({type(exc).__name__})") from None


def decode_client_message(
    data: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Message:
    return _decode(data, CLIENT_MESSAGES, max_frame_bytes, max_pixels)


def decode_server_message(
    data: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_pixels: int = 2**40
) -> Message:
    return _decode(data, SERVER_MESSAGES, max_frame_bytes, max_pixels)
