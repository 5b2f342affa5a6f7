"""Adapter that writes results into a Krita document: new layer or group, placement, provenance annotation.

Pixels are written into layers that are not yet in the layer stack, and the finished layer (or group) is added
with one `addChildNode` call, so what the user sees is a single change of the stack.
"""

from __future__ import annotations

from collections.abc import Sequence

from .bundled import geometry, images
from .document import find_node, is_exchange_space, node_id
from .model import EXCHANGE_SPACE, PROVENANCE_ANNOTATION, ProvenanceStore, ResultImage, Source, group_name, layer_name

Bounds = geometry.Bounds
swap_red_blue = images.swap_red_blue


def _paint_layer(doc, name: str, result: ResultImage, region: Bounds):
    layer = doc.createNode(name, "paintlayer")
    write_pixels(doc, layer, result, region)
    return layer


#: A layer made off-stack for a result (the preview strip adds it itself, then rewrites it per variation).
new_result_layer = _paint_layer


def write_pixels(doc, layer, result: ResultImage, region: Bounds) -> None:
    """Write a result over `region` of `layer` (replacing what was there), in the document's colour space."""
    if (result.width, result.height) != (region.width, region.height):
        raise ValueError(f"result is {result.width}x{result.height} but the region is {region.width}x{region.height}")
    convert = not is_exchange_space(doc)
    if convert:
        layer.setColorSpace(*EXCHANGE_SPACE)
    layer.setPixelData(swap_red_blue(result.rgba), region.x, region.y, region.width, region.height)
    if convert:  # back into the document's own model, depth and profile
        layer.setColorSpace(doc.colorModel(), doc.colorDepth(), doc.colorProfile())


def add_above_source(doc, top, source: Source, anchor_id: str | None) -> None:
    """Add a finished layer (or group) with one `addChildNode`: visible-image jobs on top of the stack,
    active-layer jobs directly above that layer (top of the stack if it is gone)."""
    parent, above = doc.rootNode(), None
    anchor = find_node(doc, anchor_id) if source == Source.LAYER else None
    if anchor is not None and anchor.parentNode() is not None:
        parent, above = anchor.parentNode(), anchor
    if above is None:
        siblings = parent.childNodes()
        above = siblings[-1] if siblings else None
    parent.addChildNode(top, above)


def insert_results(
    doc,
    results: Sequence[ResultImage],
    region: Bounds,
    source: Source,
    anchor_id: str | None,
    task: str,
    prompt: str,
    records: Sequence[dict],
) -> list[str]:
    """Insert a job's results: one layer, or a group (first visible, the others hidden) for several.

    Visible-image jobs go to the top of the stack; active-layer jobs directly above that layer (top of the stack if
    it is gone). Returns the uniqueIds of the inserted layer or group followed by its children."""
    if not results:
        return []
    results = sorted(results, key=lambda r: r.index)
    first = results[0]
    if len(results) == 1:
        top = _paint_layer(doc, layer_name(task, prompt, first.seed), first, region)
        children = [top]
    else:
        top = doc.createGroupLayer(group_name(task, prompt, first.seed, len(results)))
        children = []
        below = None
        # Children are added bottom-up so the first result ends on top, where it is seen.
        for r in reversed(results):
            child = _paint_layer(doc, layer_name(task, prompt, r.seed, r.index, r.count), r, region)
            child.setVisible(r is first)
            top.addChildNode(child, below)
            below = child
            children.insert(0, child)
    add_above_source(doc, top, source, anchor_id)

    ids = [node_id(top)] + ([node_id(c) for c in children] if len(results) > 1 else [])
    store = ProvenanceStore.from_bytes(doc.annotation(PROVENANCE_ANNOTATION))
    by_index = dict(zip([r.index for r in results], records, strict=True))
    if len(results) == 1:
        store.add(ids[0], dict(records[0]))
    else:
        store.add(ids[0], {"group": True, "children": ids[1:], **dict(records[0])})
        for child, r in zip(children, results, strict=True):
            store.add(node_id(child), dict(by_index.get(r.index, records[0])))
    doc.setAnnotation(PROVENANCE_ANNOTATION, "ACE Bridge provenance (JSON)", store.to_bytes())
    doc.refreshProjection()
    return ids


def read_provenance(doc) -> ProvenanceStore:
    return ProvenanceStore.from_bytes(doc.annotation(PROVENANCE_ANNOTATION))
