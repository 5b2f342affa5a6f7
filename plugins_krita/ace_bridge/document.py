"""Adapter over a Krita document: reads the context region, the selection mask and reference layers.

With layers.py, the only modules that import `krita`. Everything leaves this module as protocol value types
(`Bounds`, `ImagePayload`), so the rest of the plugin never touches libkis objects' pixel calls.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita  # type: ignore[import-not-found]

from .bundled import geometry, images
from .model import DOCUMENT_ID_ANNOTATION, EXCHANGE_SPACE, Source, mask_is_full

Bounds, Extent, context_region = geometry.Bounds, geometry.Extent, geometry.context_region
ImagePayload = images.ImagePayload

__all__ = ["DockWidget", "DockWidgetFactory", "DockWidgetFactoryBase", "Extension", "ContextRead", "read_context"]


def krita_app():
    return Krita.instance()


def krita_version() -> str:
    return Krita.instance().version()


def active_document():
    return Krita.instance().activeDocument()


def read_setting(key: str, default: str = "") -> str:
    return Krita.instance().readSetting("ace_bridge", key, default)


def write_setting(key: str, value: str) -> None:
    Krita.instance().writeSetting("ace_bridge", key, value)


@dataclass
class ContextRead:
    """What the plugin sends for one job, plus where it came from."""

    doc_key: str
    region: Bounds
    image: ImagePayload  # bgra8, the region's size
    mask: ImagePayload | None  # gray8, the region's size; None without a selection
    source: Source
    anchor_node: str | None  # uniqueId of the active layer when it was read
    references: list[ImagePayload] = field(default_factory=list)
    converted: bool = False


def is_exchange_space(doc) -> bool:
    """RGBA, 8-bit and the sRGB profile: an 8-bit document with another profile (Adobe-like, linear) is converted."""
    return (doc.colorModel(), doc.colorDepth(), doc.colorProfile()) == EXCHANGE_SPACE


def node_id(node) -> str:
    return node.uniqueId().toString()


def document_key(doc, create: bool = True) -> str:
    """A UUID stored in the document (annotation), so results find their document after switches and reloads."""
    data = doc.annotation(DOCUMENT_ID_ANNOTATION)
    key = bytes(data).decode("ascii", "replace") if data else ""
    if not key and create:
        key = str(uuid.uuid4())
        doc.setAnnotation(DOCUMENT_ID_ANNOTATION, "ACE Bridge document id", key.encode("ascii"))
    return key


def find_document(key: str, fallback=None):
    """The open document with this key; `fallback` (the wrapper kept at submit time) if none carries it."""
    for doc in Krita.instance().documents():
        if document_key(doc, create=False) == key:
            return doc
    return fallback


def walk(node) -> Iterator:
    for child in node.childNodes():
        yield child
        yield from walk(child)


def find_node(doc, unique_id: str | None):
    if not unique_id:
        return None
    return next((n for n in walk(doc.rootNode()) if node_id(n) == unique_id), None)


def node_path(doc, node) -> list[int] | None:
    """Child indices from the root to `node`: survives `Document.clone()`, which may not keep uniqueIds."""

    def search(parent, prefix):
        for i, child in enumerate(parent.childNodes()):
            if node_id(child) == node_id(node):
                return prefix + [i]
            found = search(child, prefix + [i])
            if found:
                return found
        return None

    return search(doc.rootNode(), [])


def node_at(doc, path: list[int]):
    node = doc.rootNode()
    for i in path:
        children = node.childNodes()
        if i >= len(children):
            return None
        node = children[i]
    return node


def paint_layers(doc) -> list[tuple[str, str]]:
    """(uniqueId, name) of every layer that can serve as a reference, top of the stack first."""
    kinds = {"paintlayer", "grouplayer", "vectorlayer", "filelayer", "clonelayer", "filllayer"}
    return [(node_id(n), n.name()) for n in reversed(list(walk(doc.rootNode()))) if n.type() in kinds]


def selection_bounds(doc) -> tuple[Bounds | None, object]:
    """Bounds of the selection and the selection itself; (None, None) without one or with select-all."""
    sel = doc.selection()
    if sel is None or sel.width() <= 0 or sel.height() <= 0:
        return None, None
    bounds = Bounds(sel.x(), sel.y(), sel.width(), sel.height())
    canvas = Bounds(0, 0, doc.width(), doc.height())
    if bounds.contains(canvas) and mask_is_full(bytes(sel.pixelData(0, 0, doc.width(), doc.height()))):
        return None, None
    return bounds, sel


def read_context(
    doc,
    source: Source = Source.IMAGE,
    padding: int | None = None,
    reference_ids: list[str] | tuple[str, ...] = (),
    active=None,
    control: bool = False,
) -> ContextRead:
    """Read the context region around the selection as BGRA (converting a copy if the document is not RGBA/U8),
    the selection over that region as an 8-bit soft mask, and the reference layers' pixels.

    `active` overrides the document's active layer (without a view, as under kritarunner, Krita has none).
    `control`: the layers are a structure guide (a sketch, line art, a colour block-in) for the edit, read over the
    same region as the image so they line up with it (the daemon would stretch any other size onto the region)."""
    key = document_key(doc)
    canvas = Extent(doc.width(), doc.height())
    sel_bounds, sel = selection_bounds(doc)
    region = context_region(sel_bounds, canvas, padding)
    active = active if active is not None else doc.activeNode()
    anchor = node_id(active) if active is not None else None
    mask = None
    if sel is not None:
        data = pixel_buffer(sel.pixelData(region.x, region.y, region.width, region.height))
        mask = ImagePayload(region.width, region.height, "gray8", data)

    converted = not is_exchange_space(doc)
    work = doc
    if converted:
        work = doc.clone()
        work.setColorSpace(*EXCHANGE_SPACE)
    try:
        if source == Source.LAYER and active is not None:
            path = node_path(doc, active)
            node = node_at(work, path) if converted and path is not None else active
            pixels = pixel_buffer(node.projectionPixelData(region.x, region.y, region.width, region.height))
        else:
            work.refreshProjection()
            pixels = pixel_buffer(work.pixelData(region.x, region.y, region.width, region.height))
        image = ImagePayload(region.width, region.height, "bgra8", pixels)
        references = []
        for ref_id in reference_ids:
            ref = find_node(doc, ref_id)
            if ref is None:
                continue
            if converted:
                path = node_path(doc, ref)
                ref = node_at(work, path) if path is not None else None
                if ref is None:
                    continue
            references.append(read_layer_region(ref, region) if control else read_layer(ref, canvas))
    finally:
        if converted:
            work.close()
    return ContextRead(key, region, image, mask, source, anchor, references, converted)


def pixel_buffer(data):
    """The pixels of a QByteArray without copying them (PyQt5 5.15 and PyQt6 export its buffer; the view keeps
    it alive): 64 MiB at 4096x4096 would cost ~20 ms to copy into `bytes`, and the client only reads them once,
    into the daemon's segment or the frame. Older bindings get a copy."""
    try:
        view = memoryview(data)
    except TypeError:
        return bytes(data)
    return view if view.ndim == 1 and view.itemsize == 1 and view.contiguous else bytes(data)


def read_layer_region(node, region: Bounds) -> ImagePayload:
    """A layer's own projection over `region` (transparent where the layer has nothing)."""
    data = node.projectionPixelData(region.x, region.y, region.width, region.height)
    return ImagePayload(region.width, region.height, "bgra8", pixel_buffer(data))


def read_layer(node, canvas: Extent) -> ImagePayload:
    """A layer's own projection over its bounds clamped to the canvas (the whole canvas if it is empty)."""
    r = node.bounds()
    b = Bounds(r.x(), r.y(), r.width(), r.height()).clamp(canvas)
    if b.is_empty:
        b = Bounds(0, 0, canvas.width, canvas.height)
    return ImagePayload(b.width, b.height, "bgra8", pixel_buffer(node.projectionPixelData(b.x, b.y, b.width, b.height)))
