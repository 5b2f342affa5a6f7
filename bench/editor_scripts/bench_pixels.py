"""Helpers shared by the in-editor bench scripts: test pixels (pure Python, row-wise slice assignment, no per-pixel
loop over the whole image, so a 4096x4096 document is built in well under a second) and send timing."""

import math
import time

T = time.perf_counter


def gradient_rows(w, h, order="bgra"):
    """A w x h 8-bit 4-channel gradient (red/blue along x, green along y, opaque), as bytes in `order`."""
    xs = bytearray(w * 4)
    for x in range(w):
        v = x * 255 // max(1, w - 1)
        xs[x * 4 : x * 4 + 4] = bytes((255 - v, 0, v, 255)) if order == "bgra" else bytes((v, 0, 255 - v, 255))
    out = bytearray(w * h * 4)
    for y in range(h):
        row = bytearray(xs)
        row[1::4] = bytes((y * 255 // max(1, h - 1),)) * w
        out[y * w * 4 : (y + 1) * w * 4] = row
    return bytes(out)


def soft_ellipse(w, h, cx, cy, rx, ry, soft):
    """8-bit mask: 255 inside the ellipse shrunk by `soft` px, a linear ramp to 0 at the ellipse itself."""
    out = bytearray(w * h)
    for y in range(h):
        dy = (y + 0.5 - cy) / ry
        if abs(dy) >= 1.0:
            continue
        half = rx * math.sqrt(1.0 - dy * dy)
        x0, x1 = max(0, int(cx - half)), min(w, int(math.ceil(cx + half)))
        base = y * w
        out[base + x0 : base + x1] = b"\xff" * (x1 - x0)
        for x in range(x0, min(x1, x0 + int(2 * soft) + 2)):  # the soft edge, mirrored to the right side
            d = math.hypot((x + 0.5 - cx) / rx, dy)
            v = max(0, min(255, int(round((1.0 - d) * min(rx, ry) / soft * 255))))
            out[base + x] = v
            mx = w - 1 - x if cx * 2 == w else int(2 * cx - x - 1)
            if 0 <= mx < w:
                out[base + mx] = v
    return bytes(out)


def median(values):
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def time_sends(client, sink):
    """Wrap the client's `_send` (encode + WebSocket write): when it returns for the `submit`, the pixels have left
    the process (in the frame, or already in the daemon's shared-memory segment). Records `sent_at`."""
    real = client._send

    def send(message):
        try:
            return real(message)
        finally:
            if message.TYPE == "submit":
                sink["sent_at"] = T()

    client._send = send


def mask_impl():
    from websockets.frames import apply_mask  # the C speed-up when it loads, else pure Python

    return apply_mask.__module__
