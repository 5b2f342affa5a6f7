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


# ------------------------------------------------------------------------------------------------ expand (outpaint)
#: How far the generated border blends into the old canvas, pixels (the mask ramps down from the old edge inward).
EXPAND_SEAM = 16
#: The most one side may grow by in one expand.
EXPAND_MAX = 4096


class Margins(NamedTuple):
    """How far a canvas grows on each side, pixels (>= 0)."""

    left: int
    top: int
    right: int
    bottom: int

    @classmethod
    def parse(cls, text: str) -> Margins:
        """`L,T,R,B` (one number grows every side by it); ValueError with a line a person can act on."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) == 1 and parts[0]:
            parts = parts * 4
        try:
            if len(parts) != 4:
                raise ValueError
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"expand needs L,T,R,B in pixels (e.g. 0,0,256,0), got '{text}'") from None
        if any(v < 0 or v > EXPAND_MAX for v in values):
            raise ValueError(f"expand margins must be between 0 and {EXPAND_MAX} pixels, got '{text}'")
        if not any(values):
            raise ValueError(f"expand needs at least one side above 0, got '{text}'")
        return cls(*values)

    @property
    def is_zero(self) -> bool:
        return not any(self)


def expanded_extent(canvas: Extent, margins: Margins) -> Extent:
    """The grown canvas's size."""
    return Extent(canvas.width + margins.left + margins.right, canvas.height + margins.top + margins.bottom)


def original_bounds(canvas: Extent, margins: Margins) -> Bounds:
    """Where the old canvas lies inside the grown one."""
    return Bounds(margins.left, margins.top, canvas.width, canvas.height)


def margins_for(area: Bounds, canvas: Extent) -> Margins:
    """The margins that grow `canvas` to hold `area` (a selection reaching past the canvas, in canvas coordinates);
    all zero when the area lies inside."""
    return Margins(
        max(0, -area.x),
        max(0, -area.y),
        max(0, area.x + area.width - canvas.width),
        max(0, area.y + area.height - canvas.height),
    )


def _ramp(distance: int, seam: int) -> int:
    """Mask value `distance` pixels inside the old canvas from a grown edge: high at the edge, 0 from `seam` on."""
    if distance >= seam:
        return 0
    return round(255 * (seam - distance) / (seam + 1))


def expand_mask(canvas: Extent, margins: Margins, seam: int = EXPAND_SEAM) -> bytes:
    """The outpainting mask of the grown canvas as gray8 rows, top to bottom: 255 on the new area, a ramp over
    `seam` pixels into the old canvas from each side that grew (a feathered seam), 0 elsewhere."""
    grown = expanded_extent(canvas, margins)
    seam = max(0, int(seam))
    far = seam + 1  # "no grown edge near"
    w, h = canvas.width, canvas.height
    # Distance of each old column to the nearest grown side (left/right only where they grew).
    col = [min(x if margins.left else far, (w - 1 - x) if margins.right else far) for x in range(w)]
    full_row = b"\xff" * grown.width
    rows: list[bytes] = []
    cache: dict[int, bytes] = {}
    for gy in range(grown.height):
        y = gy - margins.top
        if y < 0 or y >= h:
            rows.append(full_row)
            continue
        dy = min(y if margins.top else far, (h - 1 - y) if margins.bottom else far)
        key = min(dy, far)
        row = cache.get(key)
        if row is None:
            middle = bytes(_ramp(min(dx, key), seam) for dx in col)
            row = cache[key] = b"\xff" * margins.left + middle + b"\xff" * margins.right
        rows.append(row)
    return b"".join(rows)


def expand_pixels(data: bytes, canvas: Extent, margins: Margins, channels: int) -> bytes:
    """The canvas's pixels (`channels` bytes each, rows top to bottom) on the grown canvas, the edge pixels
    repeated outward (a neutral start the model repaints; never transparent, which would flatten to grey)."""
    w, h = canvas.width, canvas.height
    stride = w * channels
    if len(data) != stride * h:
        raise ValueError(f"expected {stride * h} bytes for {w}x{h}x{channels}, got {len(data)}")
    rows = []
    for y in range(h):
        row = bytes(data[y * stride : (y + 1) * stride])
        left = row[:channels] * margins.left
        right = row[-channels:] * margins.right
        rows.append(left + row + right)
    top = [rows[0]] * margins.top
    bottom = [rows[-1]] * margins.bottom
    return b"".join(top + rows + bottom)
