"""Expand in Krita: a selection that reaches past the canvas (or margins typed in the docker) grows the canvas and
the new area is generated to fit (outpainting with ace_protocol.geometry's grown image and seam mask).

The job reads the whole canvas, grown with its edge pixels repeated, and the mask of the new area; its region is
the grown canvas in the old canvas's coordinates (it starts left of and above 0 when those sides grow). When the
result arrives, `fit_canvas` grows the document to that region and the result layer covers it.
"""

from __future__ import annotations

from typing import Any

from . import document as kdoc
from .bundled import geometry, images
from .model import EXCHANGE_SPACE, Source

Bounds, Extent, Margins = geometry.Bounds, geometry.Extent, geometry.Margins


def wanted_margins(doc: Any, task: dict[str, Any], typed: str = "") -> Margins | None:
    """How far to grow the canvas for this job: the typed `L,T,R,B` margins, else as far as the selection reaches
    past the canvas; None when the task cannot expand or nothing asks for it. Bad typed margins raise ValueError
    with a line to show."""
    if not task.get("can_expand"):
        if typed.strip():
            raise ValueError(f"the task '{task.get('name', '?')}' cannot expand the canvas")
        return None
    if typed.strip():
        return Margins.parse(typed)
    bounds, _ = kdoc.selection_bounds(doc)
    if bounds is None:
        return None
    margins = geometry.margins_for(bounds, Extent(doc.width(), doc.height()))
    return None if margins.is_zero else margins


def read_grown(doc: Any, margins: Margins, read: kdoc.ContextRead) -> kdoc.ContextRead:
    """The job's input for an expansion: the whole canvas on the grown one, and the new area as the mask."""
    canvas = Extent(doc.width(), doc.height())
    grown = geometry.expanded_extent(canvas, margins)
    work = doc
    if read.converted:
        work = doc.clone()
        work.setColorSpace(*EXCHANGE_SPACE)
    try:
        work.refreshProjection()
        pixels = bytes(work.pixelData(0, 0, canvas.width, canvas.height))
    finally:
        if read.converted:
            work.close()
    image = images.ImagePayload(grown.width, grown.height, "bgra8", geometry.expand_pixels(pixels, canvas, margins, 4))
    mask = images.ImagePayload(grown.width, grown.height, "gray8", geometry.expand_mask(canvas, margins))
    region = Bounds(-margins.left, -margins.top, grown.width, grown.height)
    return kdoc.ContextRead(read.doc_key, region, image, mask, Source.IMAGE, read.anchor_node, [], read.converted)


def fit_canvas(doc: Any, region: Bounds) -> Bounds:
    """Grow the canvas so it holds `region` (old coordinates; nothing happens when it already does); returns the
    region in the grown canvas's coordinates, where the result layer goes."""
    canvas = Extent(doc.width(), doc.height())
    margins = geometry.margins_for(region, canvas)
    if margins.is_zero:
        return region
    grown = geometry.expanded_extent(canvas, margins)
    # Krita's resizeImage(x, y, w, h): the new canvas is that rectangle of the old one; content keeps its place.
    doc.resizeImage(-margins.left, -margins.top, grown.width, grown.height)
    doc.waitForDone()
    return Bounds(region.x + margins.left, region.y + margins.top, region.width, region.height)
