"""Runs inside Krita (`kritarunner -s krita_headless_checks -f main -- CONFIG.json`); writes RESULT.json.

Builds a small document with a background gradient, a layer that does not start at the origin and a soft
elliptical selection, then drives the plugin's adapters (document.py, layers.py) and, when the config names a
daemon, a real job through the protocol client. Every check lands in the result file as name -> [ok, detail];
kritarunner's exit code means nothing, so the host-side test reads that file.
"""

import json
import math
import os
import struct
import sys
import traceback

W, H = 96, 64
LAYER_RECT = (30, 18, 52, 40)  # x, y, w, h of the source layer's pixels: not at the origin
ELLIPSE = (56, 38, 15, 11)  # centre x, y, radii


def ellipse_mask(w, h, cx, cy, rx, ry, soft=4.0):
    """8-bit mask: 255 inside, a linear soft edge `soft` px wide, 0 outside."""
    out = bytearray(w * h)
    for y in range(h):
        for x in range(w):
            d = math.hypot((x + 0.5 - cx) / rx, (y + 0.5 - cy) / ry)
            edge = (1.0 - d) * min(rx, ry) / soft + 0.5
            out[y * w + x] = max(0, min(255, int(round(edge * 255))))
    return bytes(out)


def gradient_bgra(w, h):
    out = bytearray(w * h * 4)
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 4
            out[i : i + 4] = bytes((x * 2 % 256, y * 3 % 256, (x + y) % 256, 255))
    return bytes(out)


def pattern_bgra(w, h):
    out = bytearray(w * h * 4)
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 4
            out[i : i + 4] = bytes(((x * 7) % 256, 40, (y * 11) % 256, 200 if (x + y) % 2 else 255))
    return bytes(out)


# ---- other colour spaces: channel layout per depth (Krita stores integer RGB as BGRA, float RGB as RGBA)
PACK = {
    "U8": ("B", 1, 255.0, True),
    "U16": ("H", 2, 65535.0, True),
    "F16": ("e", 2, 1.0, False),
    "F32": ("f", 4, 1.0, False),
}
# Adobe-RGB-like "ClayRGB" (gamma 563/256) to XYZ, and XYZ to linear sRGB (both D65; Krita's elle profiles are
# both Bradford-adapted to D50, which cancels out within the tolerance)
CLAY_TO_XYZ = ((0.5767309, 0.1855540, 0.1881852), (0.2973769, 0.6273491, 0.0752741), (0.0270343, 0.0706872, 0.9911085))
XYZ_TO_SRGB = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)


def srgb_encode(v):
    v = min(1.0, max(0.0, v))
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def srgb_decode(e):
    return e / 12.92 if e <= 0.04045 else ((e + 0.055) / 1.055) ** 2.4


def linear_to_srgb8(rgb):
    return tuple(round(255 * srgb_encode(v)) for v in rgb)


def clay_to_srgb8(rgb):
    lin = [v ** (563 / 256) for v in rgb]
    xyz = [sum(m * v for m, v in zip(row, lin, strict=True)) for row in CLAY_TO_XYZ]
    return linear_to_srgb8([sum(m * v for m, v in zip(row, xyz, strict=True)) for row in XYZ_TO_SRGB])


def unpack_rgba(data, depth):
    """Raw pixel bytes of a depth -> list of (r, g, b, a) floats, 0..1 for integer depths."""
    code, size, scale, bgr = PACK[depth]
    vals = struct.unpack(f"<{len(data) // size}{code}", data)
    out = []
    for i in range(0, len(vals), 4):
        px = vals[i : i + 4]
        if bgr:
            px = (px[2], px[1], px[0], px[3])
        out.append(tuple(v / scale for v in px))
    return out


def pack_rgba(rgba, depth):
    code, _, scale, bgr = PACK[depth]
    r, g, b, a = rgba
    px = (b, g, r, a) if bgr else (r, g, b, a)
    return struct.pack(f"<4{code}", *[round(v * scale) if scale > 1 else v for v in px])


def crop(data, full_w, bpp, x, y, w, h):
    return b"".join(data[((y + j) * full_w + x) * bpp : ((y + j) * full_w + x + w) * bpp] for j in range(h))


def other_space_checks(app, check, tag, depth, profile, colour, expected_srgb8):
    """A document in (RGBA, depth, profile) filled with `colour` (in its own encoding): the plugin reads it as
    sRGB 8-bit (`expected_srgb8`), writes a stand-in result back in the document's space, touches nothing else."""
    from ace_bridge import layers
    from ace_bridge.document import node_id, read_context
    from ace_bridge.model import ResultImage, Source
    from krita import Selection

    w, h = 40, 30
    doc = app.createDocument(w, h, f"ace-{tag}", "RGBA", depth, profile, 72.0)
    try:
        space = (doc.colorModel(), doc.colorDepth(), doc.colorProfile())
        check(f"{tag}_document_space", space == ("RGBA", depth, profile), space)
        root = doc.rootNode()
        bg = root.childNodes()[0]
        bg.setPixelData(pack_rgba(colour, depth) * (w * h), 0, 0, w, h)
        sel = Selection()
        sel.select(10, 8, 12, 10, 255)
        doc.setSelection(sel)
        doc.refreshProjection()
        doc.waitForDone()
        bg_before = bytes(bg.pixelData(0, 0, w, h))
        proj_before = unpack_rgba(bytes(doc.pixelData(0, 0, w, h)), depth)

        want = bytes((expected_srgb8[2], expected_srgb8[1], expected_srgb8[0], 255))  # bgra8
        for source, active in ((Source.IMAGE, None), (Source.LAYER, bg)):
            read = read_context(doc, source, 4, active=active)
            n = read.region.width * read.region.height
            px = read.image.data
            worst = max((abs(px[i] - want[i % 4]) for i in range(len(px))), default=999)
            check(
                f"{tag}_read_{source.value}_as_srgb8",
                read.converted and read.image.format == "bgra8" and len(px) == n * 4 and worst <= 3,
                f"converted={read.converted} got {px[:4].hex()} want {want.hex()} worst {worst}",
            )

        region = read.region
        rw, rh = region.width, region.height
        colour8 = (200, 100, 50)
        rgba = bytearray(rw * rh * 4)
        inside = [(10 <= region.x + i % rw < 22 and 8 <= region.y + i // rw < 18) for i in range(rw * rh)]
        for i, ins in enumerate(inside):
            rgba[i * 4 : i * 4 + 4] = bytes((*colour8, 255)) if ins else b"\0\0\0\0"
        ids = layers.insert_results(
            doc, [ResultImage(0, 1, 3, rw, rh, bytes(rgba), {})], region, Source.IMAGE, None, "inpaint", tag, [{}]
        )
        doc.waitForDone()
        new = root.childNodes()[-1]
        space = (new.colorModel(), new.colorDepth(), new.colorProfile())
        check(f"{tag}_result_in_document_space", node_id(new) == ids[0] and space == ("RGBA", depth, profile), space)
        raw = unpack_rgba(bytes(new.pixelData(region.x, region.y, rw, rh)), depth)
        if depth in ("F16", "F32"):  # linear light in the document
            lin = [srgb_decode(c / 255) for c in colour8] + [1.0]
            tol = 2e-2 if depth == "F16" else 1e-2
            bad = [i for i, ins in enumerate(inside) if ins and max(abs(a - b) for a, b in zip(raw[i], lin)) > tol]
            check(f"{tag}_result_linear_values", not bad, f"{len(bad)} off, e.g. {raw[bad[0]] if bad else ''} vs {lin}")
        clear = all(raw[i][3] == 0 for i, ins in enumerate(inside) if not ins)
        back = read_context(doc, Source.LAYER, 4, active=new)
        worst = max(
            abs(back.image.data[i * 4 + c] - (colour8[2 - c] if c < 3 else 255))
            for i, ins in enumerate(inside)
            if ins
            for c in range(4)
        )
        check(
            f"{tag}_result_round_trip",
            clear and tuple(back.region) == tuple(region) and worst <= 3,
            f"clear={clear} worst={worst}",
        )
        check(f"{tag}_source_layer_unchanged", bytes(bg.pixelData(0, 0, w, h)) == bg_before)
        doc.refreshProjection()
        doc.waitForDone()
        proj_after = unpack_rgba(bytes(doc.pixelData(0, 0, w, h)), depth)
        tol = 1.5 / PACK[depth][2] if PACK[depth][3] else 1e-3
        changed = [
            i
            for i in range(w * h)
            if not (10 <= i % w < 22 and 8 <= i // w < 18)
            and max(abs(a - b) for a, b in zip(proj_before[i], proj_after[i])) > tol
        ]
        check(f"{tag}_projection_unchanged_outside_selection", not changed, f"{len(changed)} px changed")
    finally:
        doc.setModified(False)
        doc.close()


def main(args):
    config = json.load(open(args[-1]))
    checks = {}
    rc = 0

    def check(name, ok, detail=""):
        checks[name] = [bool(ok), str(detail)[:500]]

    try:
        os.environ["ACE_BRIDGE_NO_REGISTER"] = "1"
        sys.path[:0] = config["paths"]
        from ace_bridge import layers  # noqa: F401  (also runs the plugin's own import checks)
        from ace_bridge.document import document_key, find_document, node_id, read_context
        from ace_bridge.model import PROVENANCE_ANNOTATION, ResultImage, Source, provenance_record
        from ace_protocol.geometry import Bounds, Extent, context_region
        from ace_protocol.images import swap_red_blue
        from krita import Krita, Selection

        app = Krita.instance()
        app.setBatchmode(True)
        check("krita_version", True, app.version())
        doc = app.createDocument(W, H, "ace-test", "RGBA", "U8", "", 72.0)
        root = doc.rootNode()
        bg = root.childNodes()[0]
        bg.setPixelData(gradient_bgra(W, H), 0, 0, W, H)
        src = doc.createNode("source", "paintlayer")
        lx, ly, lw, lh = LAYER_RECT
        src_pixels = pattern_bgra(lw, lh)
        src.setPixelData(src_pixels, lx, ly, lw, lh)
        root.addChildNode(src, None)
        doc.setActiveNode(src)
        top_before = doc.createNode("top", "paintlayer")  # something above the source layer
        root.addChildNode(top_before, src)
        mask_full = ellipse_mask(W, H, *ELLIPSE)
        sel = Selection()
        sel.setPixelData(mask_full, 0, 0, W, H)
        doc.setSelection(sel)
        doc.refreshProjection()
        doc.waitForDone()
        src_before = bytes(src.pixelData(0, 0, W, H))
        bg_before = bytes(bg.pixelData(0, 0, W, H))
        proj_before = bytes(doc.pixelData(0, 0, W, H))

        # ---- reading the active layer over the context region
        s = doc.selection()
        sel_bounds = Bounds(s.x(), s.y(), s.width(), s.height())
        padding = 6
        expected_region = context_region(sel_bounds, Extent(W, H), padding)
        read = read_context(doc, Source.LAYER, padding, active=src)
        check(
            "region_matches_geometry",
            tuple(read.region) == tuple(expected_region),
            f"{tuple(read.region)} vs {tuple(expected_region)} (selection {tuple(sel_bounds)})",
        )
        rx, ry, rw, rh = read.region
        check("region_not_at_origin", rx > 0 and ry > 0, tuple(read.region))
        layer_full = bytearray(W * H * 4)
        for j in range(lh):
            layer_full[((ly + j) * W + lx) * 4 : ((ly + j) * W + lx + lw) * 4] = src_pixels[
                j * lw * 4 : (j + 1) * lw * 4
            ]
        expected_layer = crop(bytes(layer_full), W, 4, rx, ry, rw, rh)
        check(
            "layer_pixels_bgra",
            read.image.format == "bgra8" and read.image.data == expected_layer,
            f"{read.image.format} {len(read.image.data)} vs {len(expected_layer)}",
        )
        check("srgb8_not_converted", not read.converted, (read.converted, doc.colorProfile()))
        expected_mask = crop(mask_full, W, 1, rx, ry, rw, rh)
        check(
            "mask_soft_values",
            read.mask is not None and read.mask.data == expected_mask and len(set(read.mask.data) - {0, 255}) > 5,
            f"levels {len(set(read.mask.data)) if read.mask else None}",
        )
        check("anchor_is_active_layer", read.anchor_node == node_id(src), read.anchor_node)
        read_img = read_context(doc, Source.IMAGE, padding, [node_id(src)])
        check("image_pixels_projection", read_img.image.data == crop(proj_before, W, 4, rx, ry, rw, rh))
        refs = read_img.references
        check(
            "reference_layer_pixels",
            len(refs) == 1 and (refs[0].width, refs[0].height) == (lw, lh) and refs[0].data == src_pixels,
            [(r.width, r.height) for r in refs],
        )

        # ---- the result: from the daemon when one is configured, else a stand-in with the protocol's shape
        daemon = config.get("daemon")
        prov = {}
        if daemon:
            from ace_bridge.bundled import client as plugin_client  # the plugin's private protocol package
            from ace_bridge.bundled import jobs
            from ace_bridge.worker import JobSpec, run_job

            client = plugin_client.BridgeClient(
                daemon["url"],
                daemon["token"],
                client_id="krita-test",
                client_name="krita-test",
                editor="krita " + app.version(),
            )
            welcome = client.connect()
            check("daemon_tasks", "local_edit" in [t["name"] for t in welcome.tasks])
            events = []
            spec = JobSpec(
                "t1", "local_edit", "make it green {image}", read.image, read.mask, [], {"seed": 7, "steps": 2}
            )
            run_job(client, spec, lambda lid, event: events.append(event))
            kinds = [e.state if isinstance(e, jobs.JobEnded) else e.TYPE for e in events]
            check("daemon_events", kinds[0] == "accepted" and kinds[-1] == "done" and "progress" in kinds, kinds)
            results = list(events[-1].results) if kinds[-1] == "done" else []
            client.ack(events[0].job_id) if kinds and kinds[0] == "accepted" else None
            client.close()
            prov = results[0].provenance if results else {}
        else:
            rgba = bytearray(rw * rh * 4)
            rgba[1::4] = b"\xff" * (rw * rh)
            rgba[3::4] = expected_mask
            results = [ResultImage(0, 1, 7, rw, rh, bytes(rgba), {"model": "stand-in"})]
        result = results[0]
        check("result_region_size", (result.width, result.height) == (rw, rh), (result.width, result.height))
        alpha = result.rgba[3::4]
        outside_clear = all(a == 0 for a, m in zip(alpha, expected_mask, strict=True) if m == 0)
        check("result_alpha_zero_outside_selection", outside_clear)

        # ---- insert above the active layer
        rec = provenance_record(
            "local_edit", "make it green {image}", result.seed, {"steps": 2}, tuple(read.region), "layer", "job-1", prov
        )
        ids = layers.insert_results(
            doc, [result], read.region, Source.LAYER, read.anchor_node, "local_edit", "make it green {image}", [rec]
        )
        doc.waitForDone()
        names = [n.name() for n in root.childNodes()]
        new = next(n for n in root.childNodes() if node_id(n) == ids[0])
        idx_src = [node_id(n) for n in root.childNodes()].index(node_id(src))
        idx_new = [node_id(n) for n in root.childNodes()].index(ids[0])
        check("inserted_directly_above_active", idx_new == idx_src + 1, names)
        check(
            "layer_name_task_prompt_seed",
            "local_edit" in new.name() and "make it green" in new.name() and f"seed {result.seed}" in new.name(),
            new.name(),
        )
        got = bytes(new.pixelData(rx, ry, rw, rh))
        check("result_at_region_offset", got == swap_red_blue(result.rgba))
        b = new.bounds()
        check(
            "result_bounds_inside_region",
            Bounds(*read.region).contains(Bounds(b.x(), b.y(), b.width(), b.height())),
            (b.x(), b.y(), b.width(), b.height()),
        )
        doc.refreshProjection()
        doc.waitForDone()
        proj_after = bytes(doc.pixelData(0, 0, W, H))
        changed_outside = sum(
            1
            for i in range(W * H)
            if mask_full[i] == 0 and proj_after[i * 4 : i * 4 + 4] != proj_before[i * 4 : i * 4 + 4]
        )
        check("projection_unchanged_outside_selection", changed_outside == 0, f"{changed_outside} px changed")
        check(
            "source_layer_untouched",
            bytes(src.pixelData(0, 0, W, H)) == src_before and bytes(bg.pixelData(0, 0, W, H)) == bg_before,
        )

        # ---- visible-image placement (top of the stack) and a group for count > 1
        second = ResultImage(1, 2, result.seed + 1, rw, rh, bytes(result.rgba), dict(result.provenance))
        first = ResultImage(0, 2, result.seed, rw, rh, bytes(result.rgba), dict(result.provenance))
        recs = [
            provenance_record("inpaint", "a vase", r.seed, {}, tuple(read.region), "image", "job-2", {}, r.index, 2)
            for r in (first, second)
        ]
        gids = layers.insert_results(doc, [second, first], read.region, Source.IMAGE, None, "inpaint", "a vase", recs)
        top = root.childNodes()[-1]
        check(
            "group_on_top",
            node_id(top) == gids[0] and top.type() == "grouplayer",
            [n.name() for n in root.childNodes()],
        )
        kids = top.childNodes()
        vis = [(k.name(), k.visible()) for k in reversed(kids)]  # top child first
        check(
            "group_first_visible_others_hidden",
            len(kids) == 2 and vis[0][1] and not vis[1][1] and "#1/2" in vis[0][0],
            vis,
        )

        # ---- provenance survives save and reload; the document id routes results
        key = document_key(doc)
        other = app.createDocument(32, 32, "other", "RGBA", "U8", "", 72.0)
        check(
            "find_document_by_key",
            find_document(key) is not None and document_key(other) != key and document_key(find_document(key)) == key,
        )
        other.setModified(False)
        other.close()
        path = os.path.join(config["tmp"], "saved.kra")
        saved = doc.saveAs(path)
        doc.setModified(False)
        doc.close()
        doc2 = app.openDocument(path)
        store = json.loads(bytes(doc2.annotation(PROVENANCE_ANNOTATION)).decode())
        layer_rec = store["layers"].get(ids[0], {})
        check(
            "provenance_survives_reload",
            saved
            and layer_rec.get("seed") == result.seed
            and layer_rec.get("task") == "local_edit"
            and "params" in layer_rec
            and "model" in layer_rec
            and any(node_id(n) == ids[0] for n in doc2.rootNode().childNodes()),
            layer_rec,
        )
        check("provenance_group_children", all(i in store["layers"] for i in gids))
        doc2.setModified(False)
        doc2.close()

        # ---- a 16-bit document: read through a converted copy, result written back in its colour space
        d16 = app.createDocument(40, 30, "deep", "RGBA", "U16", "", 72.0)
        d16root = d16.rootNode()
        d16bg = d16root.childNodes()[0]
        d16bg.setPixelData(b"\x00\x00\xff\xff\x00\x00\xff\xff" * (40 * 30), 0, 0, 40, 30)  # opaque blue-ish
        s16 = Selection()
        s16.select(10, 8, 12, 10, 255)
        d16.setSelection(s16)
        d16.refreshProjection()
        d16.waitForDone()
        r16 = read_context(d16, Source.IMAGE, 4)
        check(
            "u16_read_converted",
            r16.converted
            and r16.image.format == "bgra8"
            and len(r16.image.data) == r16.region.width * r16.region.height * 4
            and d16.colorDepth() == "U16",
            (r16.converted, tuple(r16.region), d16.colorDepth()),
        )
        w16, h16 = r16.region.width, r16.region.height
        red = bytes((255, 0, 0, 255)) * (w16 * h16)
        ids16 = layers.insert_results(
            d16, [ResultImage(0, 1, 1, w16, h16, red, {})], r16.region, Source.IMAGE, None, "inpaint", "red", [{}]
        )
        n16 = d16root.childNodes()[-1]
        px = bytes(n16.pixelData(r16.region.x, r16.region.y, 1, 1))
        check(
            "u16_result_in_document_space",
            node_id(n16) == ids16[0]
            and n16.colorDepth() == "U16"
            and len(px) == 8
            and px[4:6] == b"\xff\xff"
            and px[6:8] == b"\xff\xff",
            (n16.colorDepth(), px.hex()),
        )
        d16.setModified(False)
        d16.close()

        # ---- float and non-sRGB documents: read as sRGB 8-bit, written back in the document's own space
        lin = (0.5, 0.2158605, 0.05, 1.0)  # linear light; sRGB-encoded about (188, 128, 63)
        clay = (200 / 255, 120 / 255, 40 / 255, 1.0)  # in ClayRGB (Adobe-like): sRGB about (224, 121, 25)
        other_space_checks(app, check, "f32", "F32", "sRGB-elle-V2-g10.icc", lin, linear_to_srgb8(lin[:3]))
        other_space_checks(app, check, "f16", "F16", "sRGB-elle-V2-g10.icc", lin, linear_to_srgb8(lin[:3]))
        other_space_checks(app, check, "clay8", "U8", "ClayRGB-elle-V2-g22.icc", clay, clay_to_srgb8(clay[:3]))
    except Exception:
        check("exception", False, traceback.format_exc())
    failed = [k for k, (ok, _) in checks.items() if not ok]
    rc = 1 if failed else 0
    with open(config["result"], "w") as fh:
        json.dump({"checks": checks, "failed": failed}, fh, indent=1)
    sys.stdout.flush()
    os._exit(rc)
