"""Image payloads on the wire: `{w, h, format, data}`, or `{w, h, format, shm}` on loopback (see `shm.py`).

Raw formats (rgba8, bgra8, gray8) are checked here byte for byte; PNG/WebP are only size-checked here and decoded
by the daemon (the editors' Python has no Pillow). Rows run top to bottom, alpha is straight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from .errors import ErrorCode, ProtocolError, bad_request
from .shm import SegmentRef

RAW_CHANNELS = {"rgba8": 4, "bgra8": 4, "gray8": 1}
ENCODED_FORMATS = ("png", "webp", "jpeg")
FORMATS = tuple(RAW_CHANNELS) + ENCODED_FORMATS

#: Default pixel cap per image (w*h); the daemon announces its own in `welcome`.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Sides beyond this are refused even if the pixel count is small (a 1 x 100,000 strip is not an image).
MAX_SIDE = 16384


@dataclass(frozen=True)
class ImagePayload:
    width: int
    height: int
    format: str
    data: bytes
    #: Set instead of `data` while the pixels lie in a shared-memory segment (client and daemon resolve it).
    shm: SegmentRef | None = None

    @property
    def channels(self) -> int | None:
        return RAW_CHANNELS.get(self.format)

    @property
    def is_raw(self) -> bool:
        return self.format in RAW_CHANNELS

    @property
    def nbytes(self) -> int:
        return self.shm.length if self.shm is not None else memoryview(self.data).nbytes

    def to_wire(self) -> dict[str, Any]:
        if self.shm is not None:
            return {"w": self.width, "h": self.height, "format": self.format, "shm": self.shm.to_wire()}
        return {"w": self.width, "h": self.height, "format": self.format, "data": self.data}

    @classmethod
    def from_wire(cls, value: Any, *, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> ImagePayload:
        if not isinstance(value, dict):
            raise bad_request(f"{what} must be a map with w, h, format, data")
        w, h, fmt, data = value.get("w"), value.get("h"), value.get("format"), value.get("data")
        for name, v in (("w", w), ("h", h)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad_request(f"{what}.{name} must be an integer")
        w, h = cast(int, w), cast(int, h)  # checked just above
        if fmt not in FORMATS:
            raise bad_request(f"{what}.format must be one of {', '.join(FORMATS)}, got {fmt!r:.40}")
        if data is None and "shm" in value:
            shared = cls(w, h, fmt, b"", SegmentRef.from_wire(value["shm"], what=what))
            shared.validate(what=what, max_pixels=max_pixels)
            return shared
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise bad_request(f"{what}.data must be binary")
        payload = cls(w, h, fmt, bytes(data) if not isinstance(data, bytes) else data)
        payload.validate(what=what, max_pixels=max_pixels)
        return payload

    def validate(self, *, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if self.width < 1 or self.height < 1:
            raise bad_request(f"{what} is {self.width}x{self.height}: both sides must be at least 1 pixel")
        if self.width > MAX_SIDE or self.height > MAX_SIDE or self.width * self.height > max_pixels:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"{what} is {self.width}x{self.height} = {self.width * self.height} pixels; the limit is "
                f"{max_pixels} pixels and {MAX_SIDE} per side. Select a smaller region.",
            )
        channels = self.channels
        if channels is not None:
            expected = self.width * self.height * channels
            if self.nbytes != expected:
                raise bad_request(
                    f"{what} says {self.width}x{self.height} {self.format} ({expected} bytes) but carries {self.nbytes}"
                )
        elif not self.nbytes:
            raise bad_request(f"{what} has no data")

    # Conversions between the raw formats, pure Python so editors can use them without numpy.
    def to_rgba8(self) -> ImagePayload:
        if self.format == "rgba8":
            return self
        if self.format == "bgra8":
            return ImagePayload(self.width, self.height, "rgba8", swap_red_blue(self.data))
        if self.format == "gray8":
            out = bytearray(len(self.data) * 4)
            for i in range(3):
                out[i::4] = self.data
            out[3::4] = b"\xff" * len(self.data)
            return ImagePayload(self.width, self.height, "rgba8", bytes(out))
        raise bad_request(f"cannot convert {self.format} without decoding it")


def swap_red_blue(data: bytes) -> bytes:
    """BGRA <-> RGBA with slice assignment: C speed without numpy."""
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)
