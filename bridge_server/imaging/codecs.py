"""Wire images <-> numpy arrays on the daemon side. Raw formats become views, not copies; PNG/WebP/JPEG are
decoded by Pillow only after their header says they fit the pixel limit (decompression bombs never expand)."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ace_protocol.errors import ErrorCode, ProtocolError, bad_request
from ace_protocol.images import ImagePayload
from PIL import Image

_PIL_FORMATS = {"png": ["PNG"], "webp": ["WEBP"], "jpeg": ["JPEG"]}


def to_array(payload: ImagePayload, *, max_pixels: int, what: str = "image", gray: bool = False) -> np.ndarray:
    """RGBA HxWx4 uint8 (or HxW uint8 with gray=True)."""
    fmt = payload.format
    arr: np.ndarray
    if fmt == "rgba8":
        arr = np.frombuffer(payload.data, np.uint8).reshape(payload.height, payload.width, 4)
        return _gray_from_rgba(arr) if gray else arr
    if fmt == "bgra8":
        arr = np.frombuffer(payload.data, np.uint8).reshape(payload.height, payload.width, 4)[..., [2, 1, 0, 3]]
        return _gray_from_rgba(arr) if gray else arr
    if fmt == "gray8":
        arr = np.frombuffer(payload.data, np.uint8).reshape(payload.height, payload.width)
        if gray:
            return arr
        return np.dstack([arr, arr, arr, np.full_like(arr, 255)])
    return _decode_encoded(payload, max_pixels=max_pixels, what=what, gray=gray)


def check_encoded(payload: ImagePayload, *, max_pixels: int, what: str = "image") -> None:
    """What `to_array` would refuse about an encoded (PNG/WebP/JPEG) payload, found without decoding its pixels:
    the format, the size in its header against the cap and the payload's w x h, and (PNG) every chunk's CRC. A
    queued job keeps its compressed bytes and is decoded when it runs (docs/security.md, memory)."""
    _open_checked(payload, max_pixels=max_pixels, what=what, decode=False)


def _open_checked(payload: ImagePayload, *, max_pixels: int, what: str, decode: bool) -> Image.Image:
    """Open an encoded payload with the size caps checked from its header, then decode its pixels (`decode`) or
    only verify the file; every failure is a typed protocol error naming `what`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(payload.data), formats=_PIL_FORMATS[payload.format])
            width, height = img.size
            if width * height > max_pixels:
                raise ProtocolError(
                    ErrorCode.TOO_LARGE, f"{what} decodes to {width}x{height}; the limit is {max_pixels} pixels"
                )
            if (width, height) != (payload.width, payload.height):
                raise bad_request(f"{what} says {payload.width}x{payload.height} but the file is {width}x{height}")
            if decode:
                img.load()
            else:
                img.verify()
    except ProtocolError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{what} is a decompression bomb") from None
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors
        raise bad_request(f"{what} is not a readable {payload.format} file ({type(exc).__name__})") from None
    return img


def _gray_from_rgba(arr: np.ndarray) -> np.ndarray:
    # A mask sent as RGBA: use the red channel (masks are drawn white-on-black).
    return np.ascontiguousarray(arr[..., 0])


def _decode_encoded(payload: ImagePayload, *, max_pixels: int, what: str, gray: bool) -> np.ndarray:
    img = _open_checked(payload, max_pixels=max_pixels, what=what, decode=True)
    if gray:
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGBA"))


def encode_png(rgba: np.ndarray, *, compress_level: int = 1, parallel: bool = True) -> bytes:
    """Fast lossless PNG for history, written before `result` is sent, so it is on every job's critical path.

    Pillow tries all five PNG filters on every row (adaptive filtering); at 2048x2048 that alone takes seconds.
    Here every row uses the "Up" filter, computed in one numpy subtraction, and zlib (which releases the GIL)
    compresses at `compress_level`: over 10x faster, files within ~10-20 % of Pillow's level 1.

    Level 0 ("stored" deflate blocks, a valid PNG about as big as the pixels) skips the filter, which would not
    shrink it: about 10x faster again. `parallel=False` keeps zlib on the calling thread (background work)."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        buf = io.BytesIO()
        Image.fromarray(rgba).save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
    height, width = rgba.shape[:2]
    if compress_level == 0 and width * 4 + 1 <= 65535:
        return encode_png_stored(rgba).tobytes()
    rows = np.ascontiguousarray(rgba).reshape(height, width * 4)
    filtered = np.empty((height, width * 4 + 1), np.uint8)
    if compress_level == 0:
        filtered[:, 0] = 0  # filter type None
        filtered[:, 1:] = rows
    else:
        filtered[:, 0] = 2  # filter type Up: each byte minus the byte above it, modulo 256
        filtered[0, 1:] = rows[0]
        np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    idat = _deflate_parallel(filtered, compress_level) if parallel else zlib.compress(filtered, compress_level)
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"".join((b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))


def _adler_all(pieces: list[np.ndarray]) -> int:
    adler = 1
    for piece in pieces:
        adler = zlib.adler32(piece, adler)
    return adler


def encode_png_stored(rgba: np.ndarray) -> np.ndarray:
    """The level-0 PNG of `encode_png`, built in place: one buffer holding the whole file, into which the rows are
    copied once, whole rows per stored deflate block (filter type None), then Adler-32 and CRC-32 over it. No zlib
    pass, no joins: the four 16 MB copies of the general path at 2048x2048 become one. Returns a uint8 array (write
    it as is, or `.tobytes()`). Rows over 65,535 bytes (16,384 px) take the general path."""
    rgba = np.ascontiguousarray(rgba)
    height, width = rgba.shape[:2]
    row = width * 4 + 1
    per_block = 65535 // row
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4 or per_block < 1:
        return np.frombuffer(encode_png(rgba, compress_level=0), np.uint8)
    full, rest = divmod(height, per_block)
    stream = 2 + full * (5 + per_block * row) + (5 + rest * row if rest else 0) + 4  # zlib header .. Adler-32
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    head = b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", stream) + b"IDAT"
    out = np.empty(len(head) + stream + 4 + 12, np.uint8)
    out[: len(head)] = np.frombuffer(head, np.uint8)
    at = len(head)
    out[at : at + 2] = (0x78, 0x01)
    at += 2
    pixels = rgba.reshape(height, width * 4)
    block_data: list[np.ndarray] = []  # each stored block's data, for the Adler-32
    for count, rows, final in ((per_block, full, not rest), (rest, 1 if rest else 0, True)):
        if not rows:
            continue
        size = count * row
        blocks = out[at : at + rows * (5 + size)].reshape(rows, 5 + size)
        blocks[:, 0] = 0
        if final:
            blocks[-1, 0] = 1  # BFINAL
        blocks[:, 1:5] = np.frombuffer(struct.pack("<HH", size, size ^ 0xFFFF), np.uint8)
        data = blocks[:, 5:].reshape(rows, count, row)
        data[:, :, 0] = 0  # filter type None
        first = full * per_block if count == rest and rest else 0
        data[:, :, 1:] = pixels[first : first + rows * count].reshape(rows, count, width * 4)
        block_data.extend(blocks[index, 5:] for index in range(rows))
        at += rows * (5 + size)
    # Adler-32 (over the rows) and CRC-32 (over the whole chunk) are independent passes, and zlib lets go of the
    # GIL for both: run them side by side on two cores.
    adler_box: list[int] = []
    adler_thread = threading.Thread(target=lambda: adler_box.append(_adler_all(block_data)), daemon=True)
    adler_thread.start()
    crc = zlib.crc32(out[len(head) - 4 : at])
    adler_thread.join()
    out[at : at + 4] = np.frombuffer(struct.pack(">I", adler_box[0]), np.uint8)
    crc = zlib.crc32(out[at : at + 4], crc)
    at += 4
    out[at : at + 4] = np.frombuffer(struct.pack(">I", crc), np.uint8)
    out[at + 4 :] = np.frombuffer(_chunk(b"IEND", b""), np.uint8)
    return out


_POOL: ThreadPoolExecutor | None = None
_PARALLEL_MIN = 4 * 1024 * 1024  # below this one zlib call is quicker than the hand-off


def _deflate_parallel(data: np.ndarray, level: int) -> bytes:
    """One zlib stream, compressed in slices on several cores (zlib releases the GIL), as pigz does: every slice
    but the last ends with a full flush, so the raw deflate pieces join into one valid stream; the Adler-32 of the
    whole input closes it."""
    global _POOL
    flat = memoryview(data).cast("B")
    workers = min(8, os.cpu_count() or 1)
    if workers < 2 or len(flat) < _PARALLEL_MIN:
        return zlib.compress(flat, level)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ace-png")
    step = -(-len(flat) // workers)
    slices = [flat[i : i + step] for i in range(0, len(flat), step)]

    def deflate(index: int) -> bytes:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        last = index == len(slices) - 1
        return compressor.compress(slices[index]) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    pieces = list(_POOL.map(deflate, range(len(slices))))
    header = bytes((0x78, 0x01))  # deflate, 32 KiB window, no dictionary (valid for any level)
    return b"".join((header, *pieces, struct.pack(">I", zlib.adler32(flat))))


def _chunk(tag: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(tag))
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data), formats=["PNG"]).convert("RGBA"))


def thumbnail_webp(rgba: np.ndarray, size: int = 256) -> bytes:
    img = Image.fromarray(rgba)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=80)
    return buf.getvalue()
