"""Editor-independent geometry: the context region around a selection.

Both plugins call `context_region` so Krita and GIMP send the same pixels for the same selection.
"""

from __future__ import annotations

from typing import NamedTuple

#: ACE++ centre-crops inputs beyond 4:1; the plugins pad the context instead so nothing is lost.
MAX_ASPECT = 4.0


class Extent(NamedTuple):
    width: int
    height: int


class Bounds(NamedTuple):
    x: int
    y: int
    width: int
    height: int

    @property
    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def pad(self, amount: int) -> Bounds:
        """Grow by `amount` pixels on every side."""
        return Bounds(self.x - amount, self.y - amount, self.width + 2 * amount, self.height + 2 * amount)

    def clamp(self, extent: Extent) -> Bounds:
        """Intersect with the canvas [0, extent)."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.width, extent.width), min(self.y + self.height, extent.height)
        return Bounds(x0, y0, max(0, x1 - x0), max(0, y1 - y0))

    def contains(self, other: Bounds) -> bool:
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.x + other.width <= self.x + self.width
            and other.y + other.height <= self.y + self.height
        )


def default_padding(selection: Bounds, fraction: float = 0.1, minimum: int = 16) -> int:
    """Context padding that grows with the selection: `fraction` of its longer side, at least `minimum` px."""
    return max(minimum, round(max(selection.width, selection.height) * fraction))


def _grow_axis(start: int, length: int, target: int, limit: int) -> tuple[int, int]:
    """Widen [start, start+length) to `target` inside [0, limit), centred where the canvas allows."""
    target = min(target, limit)
    if length >= target:
        return start, length
    extra = target - length
    new_start = start - extra // 2
    new_start = max(0, min(new_start, limit - target))
    return new_start, target


def context_region(selection: Bounds | None, canvas: Extent, padding: int | None = None) -> Bounds:
    """The region a plugin sends: selection bounds + padding, clamped to the canvas, padded (never cropped) to
    at most 4:1 within the canvas. No selection means the whole canvas."""
    whole = Bounds(0, 0, canvas.width, canvas.height)
    if selection is None or selection.is_empty:
        return whole
    pad = default_padding(selection) if padding is None else max(0, int(padding))
    region = selection.pad(pad).clamp(canvas)
    if region.is_empty:
        return whole
    x, y, w, h = region
    if w > MAX_ASPECT * h:
        y, h = _grow_axis(y, h, -(-w // int(MAX_ASPECT)), canvas.height)
    elif h > MAX_ASPECT * w:
        x, w = _grow_axis(x, w, -(-h // int(MAX_ASPECT)), canvas.width)
    return Bounds(x, y, w, h)
