"""Batch code run inside real GIMP 3 (python-fu-eval) by tests/editors/test_gimp_plugin.py.

Calls the installed ACE++ procedures non-interactively against a real daemon and records named checks
{name: [ok, detail]} into a JSON file; the host test asserts on them. Config: env ACE_GIMP_CHECKS_CONFIG (JSON).
"""

import json
import os
import struct
import sys
import traceback
from types import SimpleNamespace

from gi.repository import Gegl, Gimp, Gio

CONFIG = json.load(open(os.environ["ACE_GIMP_CHECKS_CONFIG"]))
sys.path[:0] = [CONFIG["plugin_dir"] + "/_vendor"]
from ace_protocol.geometry import Bounds, Extent, context_region  # noqa: E402

RGBA = "R'G'B'A u8"
W, H = 96, 64
CHECKS = {}
PARASITE = "ace-bridge-provenance"


def check(name, ok, detail=""):
    CHECKS[name] = [bool(ok), str(detail)[:2000]]


def rect(x, y, w, h):
    return Gegl.Rectangle.new(x, y, w, h)


def read(drawable, fmt=RGBA):
    return bytes(
        drawable.get_buffer().get(
            rect(0, 0, drawable.get_width(), drawable.get_height()), 1.0, fmt, Gegl.AbyssPolicy.NONE
        )
    )


def visible(img):
    tmp = Gimp.Layer.new_from_visible(img, img, "probe")
    try:
        return read(tmp)
    finally:
        tmp.delete()


def sel_mask(img):
    return bytes(img.get_selection().get_buffer().get(rect(0, 0, W, H), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))


def gradient(w, h, seed=0):
    out = bytearray(w * h * 4)
    for y in range(h):
        for x in range(w):
            i = (y * w + x) * 4
            out[i : i + 4] = bytes(
                (
                    (x * 255 // max(1, w - 1) + seed) % 256,
                    (y * 255 // max(1, h - 1)) % 256,
                    (seed * 7 + x + y) % 256,
                    255,
                )
            )
    return bytes(out)


def add_layer(img, name, w, h, pos=0, seed=0, offsets=(0, 0)):
    layer = Gimp.Layer.new(img, name, w, h, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, pos)
    buf = layer.get_buffer()
    buf.set(rect(0, 0, w, h), RGBA, gradient(w, h, seed))
    buf.flush()
    layer.set_offsets(*offsets)
    return layer


def new_image(precision=None):
    if precision is None:
        img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    else:
        img = Gimp.Image.new_with_precision(W, H, Gimp.ImageBaseType.RGB, precision)
    bg = add_layer(img, "bg", W, H)
    return img, bg


def run_proc(name, img, drawables, **props):
    proc = Gimp.get_pdb().lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", drawables)
    props.setdefault("url", CONFIG["url"])
    props.setdefault("token", CONFIG["token"])
    for key, value in props.items():
        cfg.set_property(key, value)
    res = proc.run(cfg)
    status = res.index(0)
    second = res.index(1) if res.length() > 1 else None
    return status.value_nick, second


def offs(item):
    v = item.get_offsets()
    return int(v[-2]), int(v[-1])


def provenance(item):
    p = item.get_parasite(PARASITE)
    if p is None:
        return None
    return json.loads(bytes(p.get_data()).decode("utf-8")), p.get_flags()


def outside_unchanged(before, after, mask):
    bad = [i for i, m in enumerate(mask) if m == 0 and before[4 * i : 4 * i + 4] != after[4 * i : 4 * i + 4]]
    return not bad, f"{len(bad)} pixels changed outside the selection, first {bad[:5]}"


def selection_bounds(img):
    v = Gimp.Selection.bounds(img)
    x1, y1, x2, y2 = (int(a) for a in v[-4:])
    return Bounds(x1, y1, x2 - x1, y2 - y1)


def task_scenario(task):
    """Each offered task, with a rectangular selection (none for `instruct`: the whole image)."""
    t = task["name"]
    proc = task["gimp_procedure"]
    img, bg = new_image()
    ref = None
    if task["max_references"] > 0:
        ref = add_layer(img, "ref", 32, 32, pos=0, seed=99)
        ref.set_visible(False)
    use_selection = t != "instruct"
    if use_selection:
        img.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 12, 40, 30)
    before_vis, before_bg, mask = visible(img), read(bg), sel_mask(img)
    if not use_selection:
        mask = b"\xff" * (W * H)
    before_ids = [layer.get_id() for layer in img.get_layers()]
    props = {"prompt": f"test {t}", "seed": 5, "steps": 2, "count": 1}
    if ref is not None:
        props["reference"] = ref
    if task["needs_image"]:
        props["padding"] = 4
    status, value = run_proc(proc, img, [bg], **props)
    check(f"{t}:status", status == "success", f"{status}: {value}")
    layers = img.get_layers()
    new = [layer for layer in layers if layer.get_id() not in before_ids]
    check(
        f"{t}:one_new_layer_on_top",
        len(new) == 1 and layers[0].get_id() == new[0].get_id() and value == 1,
        [x.get_name() for x in layers],
    )
    if len(new) != 1:
        img.delete()
        return
    layer = new[0]
    sel = Bounds(20, 12, 40, 30)
    if task["needs_image"]:
        region = context_region(sel if use_selection else None, Extent(W, H), 4)
    else:
        region = sel
    got = (*offs(layer), layer.get_width(), layer.get_height())
    check(f"{t}:at_region", got == tuple(region), f"layer {got} region {tuple(region)}")
    prov = provenance(layer)
    check(
        f"{t}:parasite",
        prov is not None
        and prov[0].get("task") == t
        and prov[0].get("seed") == 5
        and prov[0].get("prompt") == f"test {t}"
        and prov[1] & Gimp.PARASITE_PERSISTENT,
        prov,
    )
    check(f"{t}:source_untouched", read(bg) == before_bg and len(img.get_layers()) == len(before_ids) + 1)
    if use_selection:
        after = visible(img)
        if task["needs_image"]:
            ok, detail = outside_unchanged(before_vis, after, mask)
        else:  # generated into the selection's bounds
            box = bytearray(W * H)
            for y in range(sel.y, sel.y + sel.height):
                box[y * W + sel.x : y * W + sel.x + sel.width] = b"\xff" * sel.width
            ok, detail = outside_unchanged(before_vis, after, bytes(box))
        check(f"{t}:outside_selection_unchanged", ok, detail)
    if t == CONFIG.get("xcf_task"):
        xcf = os.path.join(CONFIG["work_dir"], "result.xcf")
        Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(xcf), None)
        again = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(xcf))
        top = again.get_layers()[0]
        p2 = provenance(top)
        check("xcf_keeps_provenance", p2 is not None and p2[0] == prov[0], p2)
        again.delete()
    img.delete()


def offset_layer_soft_selection():
    """Active layer not at the origin, soft elliptical selection, only the active layer read."""
    img, bg = new_image()
    src = add_layer(img, "offset", 60, 40, pos=0, seed=40, offsets=(20, 12))
    cover = add_layer(img, "cover", 10, 10, pos=0, seed=3, offsets=(0, 0))
    img.select_ellipse(Gimp.ChannelOps.REPLACE, 26, 16, 44, 30)
    Gimp.Selection.feather(img, 10.0)
    mask = sel_mask(img)
    soft = sum(1 for v in mask if 0 < v < 255)
    check("soft:selection_is_soft", soft > 20, soft)
    before = {n.get_name(): read(n) for n in (bg, src, cover)}
    before_vis = visible(img)
    status, value = run_proc(
        CONFIG["geometry_procedure"], img, [src], prompt="soft", seed=5, steps=2, padding=6, source="layer"
    )
    check("soft:status", status == "success", f"{status}: {value}")
    layers = img.get_layers()
    names = [x.get_name() for x in layers]
    check(
        "soft:directly_above_active",
        len(layers) == 4 and layers[1].get_name().startswith("[ACE++]") and names[2] == "offset",
        names,
    )
    if len(layers) != 4:
        img.delete()
        return
    result = layers[1]
    region = context_region(selection_bounds(img), Extent(W, H), 6)
    got = (*offs(result), result.get_width(), result.get_height())
    check("soft:at_region", got == tuple(region), f"layer {got} region {tuple(region)}")
    alpha = read(result)[3::4]
    rx, ry = offs(result)
    outside_alpha = [
        alpha[(y - ry) * result.get_width() + (x - rx)]
        for y in range(ry, ry + result.get_height())
        for x in range(rx, rx + result.get_width())
        if mask[y * W + x] == 0
    ]
    check(
        "soft:alpha_zero_outside_selection",
        outside_alpha and max(outside_alpha) == 0,
        f"max {max(outside_alpha or [0])}",
    )
    check("soft:alpha_soft_inside", any(0 < a < 255 for a in alpha), sorted(set(alpha))[:10])
    check("soft:sources_untouched", all(read(n) == before[n.get_name()] for n in (bg, src, cover)))
    ok, detail = outside_unchanged(before_vis, visible(img), mask)
    check("soft:outside_selection_unchanged", ok, detail)
    img.delete()


def sixteen_bit():
    img, bg = new_image(Gimp.Precision.U16_NON_LINEAR)
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 8, 8, 30, 20)
    before16 = read(bg, "R'G'B'A u16")
    before_vis, mask = visible(img), sel_mask(img)
    status, value = run_proc(CONFIG["geometry_procedure"], img, [bg], prompt="deep", seed=5, steps=2, padding=4)
    check("16bit:status", status == "success", f"{status}: {value}")
    layers = img.get_layers()
    check(
        "16bit:new_layer",
        len(layers) == 2 and layers[0].get_name().startswith("[ACE++]"),
        [x.get_name() for x in layers],
    )
    check("16bit:precision_kept", img.get_precision() == Gimp.Precision.U16_NON_LINEAR, img.get_precision())
    check("16bit:source_untouched", read(bg, "R'G'B'A u16") == before16)
    ok, detail = outside_unchanged(before_vis, visible(img), mask)
    check("16bit:outside_selection_unchanged", ok, detail)
    img.delete()


def srgb_encode(v):
    v = min(1.0, max(0.0, v))
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def srgb_decode(e):
    return e / 12.92 if e <= 0.04045 else ((e + 0.055) / 1.055) ** 2.4


def worst_diff(data, want):
    return max((abs(data[i] - want[i % len(want)]) for i in range(len(data))), default=999)


def stand_in_result(plug, img, region, colour):
    """A result with the protocol's shape (the selection as alpha) inserted by the plug-in's own insert_results."""
    from ace_protocol.images import ImagePayload

    mask = plug.read_selection_mask(img, region).data
    rgba = bytearray(region.width * region.height * 4)
    for i, m in enumerate(mask):
        rgba[i * 4 : i * 4 + 4] = bytes((*colour, m))
    result = SimpleNamespace(
        image=ImagePayload(region.width, region.height, "rgba8", bytes(rgba)),
        seed=3,
        index=0,
        job_id="stand-in",
        provenance={},
        region=None,
    )
    meta = {"task": "inpaint", "prompt": "stand-in", "region": list(region), "placement": "top"}
    layers = plug.insert_results(img, [result], meta, None)
    return layers[0] if len(layers) == 1 else None, mask


def other_precisions():
    """32-bit float linear and grayscale images: the plug-in reads R'G'B'A u8 (perceptual) and writes the result
    into a layer of the image's own precision / base type; then the same through the real procedure."""
    sys.path.insert(0, CONFIG["plugin_dir"])
    import acegimp_gimp as plug

    region = Bounds(8, 6, 40, 30)
    sel = Bounds(12, 10, 30, 20)
    colour = (200, 100, 50)

    # -- float linear: a known linear colour arrives sRGB-encoded
    img = Gimp.Image.new_with_precision(W, H, Gimp.ImageBaseType.RGB, Gimp.Precision.FLOAT_LINEAR)
    bg = Gimp.Layer.new(img, "bg", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(bg, None, 0)
    lin = (0.5, 0.2158605, 0.05, 1.0)
    buf = bg.get_buffer()
    buf.set(rect(0, 0, W, H), "RGBA float", struct.pack("<4f", *lin) * (W * H))
    buf.flush()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *sel)
    want = [round(255 * srgb_encode(v)) for v in lin[:3]] + [255]
    for name, payload in (("layer", plug.read_drawable(bg, region)), ("visible", plug.read_visible(img, region))):
        worst = worst_diff(payload.data, want)
        check(
            f"float:read_{name}_srgb_u8",
            payload.format == "rgba8" and len(payload.data) == 40 * 30 * 4 and worst <= 2,
            f"{payload.format} first {list(payload.data[:4])} want {want} worst {worst}",
        )
    before_bg, before_vis = read(bg, "RGBA float"), visible(img)
    layer, mask = stand_in_result(plug, img, region, colour)
    check(
        "float:result_layer",
        layer is not None
        and img.get_layers()[0].get_id() == layer.get_id()
        and (*offs(layer), layer.get_width(), layer.get_height()) == tuple(region)
        and img.get_precision() == Gimp.Precision.FLOAT_LINEAR,
        img.get_precision(),
    )
    if layer is not None:
        got8 = read(layer)
        inside = [i for i, m in enumerate(mask) if m == 255]
        worst = max(abs(got8[i * 4 + c] - (*colour, 255)[c]) for i in inside for c in range(4))
        outside_alpha = max(got8[i * 4 + 3] for i, m in enumerate(mask) if m == 0)
        check("float:result_srgb_u8_back", worst <= 1 and outside_alpha == 0, f"worst {worst} alpha {outside_alpha}")
        gotf = struct.unpack(f"<{40 * 30 * 4}f", read(layer, "RGBA float"))
        linear = [srgb_decode(c / 255) for c in colour] + [1.0]
        worst_f = max(abs(gotf[i * 4 + c] - linear[c]) for i in inside for c in range(4))
        check("float:result_linear_values", worst_f < 5e-3, f"worst {worst_f:.5f}")
    check("float:source_untouched", read(bg, "RGBA float") == before_bg)
    full_mask = sel_mask(img)
    ok, detail = outside_unchanged(before_vis, visible(img), full_mask)
    check("float:outside_selection_unchanged", ok, detail)
    img.delete()

    img, bg = new_image(Gimp.Precision.FLOAT_LINEAR)
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *sel)
    before_f, before_vis, full_mask = read(bg, "RGBA float"), visible(img), sel_mask(img)
    status, value = run_proc(CONFIG["geometry_procedure"], img, [bg], prompt="float", seed=5, steps=2, padding=4)
    layers = img.get_layers()
    check(
        "float:procedure",
        status == "success"
        and value == 1
        and len(layers) == 2
        and img.get_precision() == Gimp.Precision.FLOAT_LINEAR
        and read(bg, "RGBA float") == before_f,
        f"{status}: {value} {[x.get_name() for x in layers]}",
    )
    ok, detail = outside_unchanged(before_vis, visible(img), full_mask)
    check("float:procedure_outside_unchanged", ok, detail)
    img.delete()

    # -- grayscale: read as R'G'B'A u8 with R = G = B, the result becomes a gray layer
    img = Gimp.Image.new(W, H, Gimp.ImageBaseType.GRAY)
    bg = Gimp.Layer.new(img, "bg", W, H, Gimp.ImageType.GRAYA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(bg, None, 0)
    buf = bg.get_buffer()
    buf.set(rect(0, 0, W, H), "Y'A u8", bytes((100, 255)) * (W * H))
    buf.flush()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *sel)
    payload = plug.read_drawable(bg, region)
    worst = worst_diff(payload.data, (100, 100, 100, 255))
    check("gray:read_rgba_u8", payload.format == "rgba8" and worst <= 1, f"first {list(payload.data[:4])}")
    before_bg, before_vis = read(bg, "Y'A u8"), visible(img)
    layer, mask = stand_in_result(plug, img, region, colour)
    if layer is not None:
        got = read(layer, "Y'A u8")
        y = srgb_encode(sum(w * srgb_decode(c / 255) for w, c in zip((0.2126, 0.7152, 0.0722), colour)))
        inside = [i for i, m in enumerate(mask) if m == 255]
        worst = max(abs(got[i * 2] - round(255 * y)) for i in inside)
        check(
            "gray:result_gray_layer",
            layer.is_gray() and worst <= 3 and (*offs(layer), layer.get_width(), layer.get_height()) == tuple(region),
            f"gray={layer.is_gray()} first {list(got[inside[0] * 2 : inside[0] * 2 + 2])} want {round(255 * y)}",
        )
    else:
        check("gray:result_gray_layer", False, [x.get_name() for x in img.get_layers()])
    check("gray:source_untouched", read(bg, "Y'A u8") == before_bg)
    ok, detail = outside_unchanged(before_vis, visible(img), sel_mask(img))
    check("gray:outside_selection_unchanged", ok, detail)
    for extra in img.get_layers()[:-1]:
        img.remove_layer(extra)
    before_vis = visible(img)
    status, value = run_proc(CONFIG["geometry_procedure"], img, [bg], prompt="gray", seed=5, steps=2, padding=4)
    layers = img.get_layers()
    check(
        "gray:procedure",
        status == "success"
        and value == 1
        and len(layers) == 2
        and layers[0].is_gray()
        and read(bg, "Y'A u8") == before_bg,
        f"{status}: {value} {[x.get_name() for x in layers]}",
    )
    ok, detail = outside_unchanged(before_vis, visible(img), sel_mask(img))
    check("gray:procedure_outside_unchanged", ok, detail)
    img.delete()


def several_results():
    img, bg = new_image()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 30, 20, 24, 16)
    status, value = run_proc(CONFIG["geometry_procedure"], img, [bg], prompt="two", seed=5, steps=2, count=2)
    check("group:status", status == "success", f"{status}: {value}")
    top = img.get_layers()[0]
    is_group = top.is_group()
    children = top.get_children() if is_group else []
    seeds = sorted(provenance(c)[0].get("seed") for c in children if provenance(c))
    check(
        "group:layer_group_of_two",
        is_group and len(children) == 2 and seeds == [5, 6] and value == 2,
        f"group={is_group} children={len(children)} seeds={seeds} value={value}",
    )
    img.delete()


def errors():
    img, bg = new_image()
    proc = CONFIG["selection_procedure"]
    status, message = run_proc(proc, img, [bg], prompt="x", steps=2)
    check(
        "no_selection:message",
        status == "execution-error" and "make a selection first" in (message or ""),
        f"{status}: {message}",
    )
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 10, 20, 20)
    status, message = run_proc(proc, img, [bg], prompt="x", steps=2, url=CONFIG["dead_url"])
    check(
        "no_daemon:message",
        status == "execution-error" and "ace-bridge serve" in (message or "") and "not running" in (message or ""),
        f"{status}: {message}",
    )
    status, message = run_proc(proc, img, [bg], prompt="x", steps=2, token="not-the-token")
    check(
        "bad_token:message",
        status == "execution-error" and "token" in (message or "").lower() and "Traceback" not in (message or ""),
        f"{status}: {message}",
    )
    check("errors:no_layer_added", len(img.get_layers()) == 1)
    img.delete()


def fetch_results():
    img, bg = new_image()
    status, value = run_proc("python-fu-ace-bridge-fetch-results", img, [bg])
    layers = img.get_layers()
    prov = provenance(layers[0]) if layers else None
    check(
        "fetch:inserted",
        status == "success"
        and value == CONFIG["fetch_expected"]
        and len(layers) == 2
        and prov is not None
        and prov[0].get("job_id") == CONFIG.get("fetch_job_id"),
        f"{status} value={value} layers={[x.get_name() for x in layers]} prov={prov}",
    )
    status, value = run_proc("python-fu-ace-bridge-fetch-results", img, [bg])
    check("fetch:acknowledged", status == "success" and value == 0, f"{status} value={value}")
    img.delete()


def mean_distance(data, colour, mask=None):
    """Mean per-channel distance of RGBA pixels to an RGB colour (where `mask` is set, else everywhere)."""
    total = n = 0
    for i in range(len(data) // 4):
        if mask is not None and not mask[i]:
            continue
        total += sum(abs(data[4 * i + c] - colour[c]) for c in range(3))
        n += 3
    return total / max(1, n)


def painted_image(colour):
    img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    bg = Gimp.Layer.new(img, "painted", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(bg, None, 0)
    buf = bg.get_buffer()
    buf.set(rect(0, 0, W, H), RGBA, bytes((*colour, 255)) * (W * H))
    buf.flush()
    return img, bg


def strength():
    """Story 2: the strength slider. At strength 1 the selection is redrawn from noise, so what was painted there does
    not matter (a red and a blue painting give the same result); at 0.05 the painting carries into the result (the
    two differ), the job says so, and the daemon ran it as image-to-image."""
    results = {}
    for value in (0.05, 1.0):
        for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            img, bg = painted_image(colour)
            img.select_rectangle(Gimp.ChannelOps.REPLACE, 16, 8, 48, 40)
            status, count = run_proc(
                "python-fu-ace-bridge-inpaint", img, [bg], prompt="clean up", seed=5, steps=12, strength=value
            )
            layers = img.get_layers()
            check(f"strength:{value}:{name}:status", status == "success" and count == 1, f"{status}: {count}")
            if len(layers) != 2:
                img.delete()
                return
            prov = provenance(layers[0])[0]
            sent = prov.get("params", {}).get("strength")
            ran = prov.get("server", {}).get("params", {}).get("strength")
            check(
                f"strength:{value}:{name}:recorded",
                sent == (None if value == 1.0 else value) and ran == value,
                f"sent {prov.get('params')} ran {ran}",
            )
            results[(value, name)] = read(layers[0])
            img.delete()

    def difference(value):
        a, b = results[(value, "red")], results[(value, "blue")]
        return sum(abs(x - y) for x, y in zip(a, b)) / len(a)

    low, full = difference(0.05), difference(1.0)
    check(
        "strength:low_keeps_what_was_painted",
        low > 2.0 and low > 4 * full,
        f"mean difference between the red and the blue painting's results: strength 0.05 {low:.2f}, 1.0 {full:.2f}",
    )


def stand_in_results(plug, region, colours):
    from ace_protocol.images import ImagePayload

    return [
        SimpleNamespace(
            image=ImagePayload(region.width, region.height, "rgba8", bytes((*c, 255)) * (region.width * region.height)),
            seed=10 + i,
            index=i,
            count=len(colours),
            job_id="stand-in",
            provenance={},
            region=None,
        )
        for i, c in enumerate(colours)
    ]


def preview_then_apply():
    """Story 1 (the canvas side of the results window): one temporary preview layer at a time, Apply keeps the
    chosen result as the result layer, Discard leaves the image as it was."""
    sys.path.insert(0, CONFIG["plugin_dir"])
    import acegimp_gimp as plug
    import acegimp_logic as logic

    region = Bounds(10, 8, 30, 20)
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    meta = {"task": "inpaint", "prompt": "three", "region": list(region), "placement": "top", "params": {}}
    img, bg = new_image()
    before = visible(img)
    session = plug.PreviewSession(img, stand_in_results(plug, region, colours), meta, None)
    session.show(0)
    names = [x.get_name() for x in img.get_layers()]
    check("preview:first_shown", len(names) == 2 and names[0].startswith(logic.PREVIEW_PREFIX), names)
    session.show(2)
    layers = img.get_layers()
    top = read(layers[0])
    check(
        "preview:one_preview_at_a_time",
        len(layers) == 2
        and layers[0].get_name().startswith(logic.PREVIEW_PREFIX)
        and top[:4] == bytes((0, 0, 250, 255))
        and offs(layers[0]) == (10, 8),
        [x.get_name() for x in layers],
    )
    applied = session.apply()
    layers = img.get_layers()
    prov = provenance(layers[0])
    check(
        "preview:apply_keeps_the_chosen_one",
        len(applied) == 1
        and len(layers) == 2
        and layers[0].get_name().startswith("[ACE++]")
        and read(layers[0])[:4] == bytes((0, 0, 250, 255))
        and prov is not None
        and prov[0]["seed"] == 12,
        f"{[x.get_name() for x in layers]} {prov}",
    )
    check("preview:undo_thawed", img.undo_is_enabled(), "undo stays frozen after Apply")
    img.delete()

    img, bg = new_image()
    before = visible(img)
    session = plug.PreviewSession(img, stand_in_results(plug, region, colours[:2]), meta, None)
    session.show(1)
    shown = len(img.get_layers())
    session.discard()
    check(
        "preview:discard_leaves_the_image",
        shown == 2 and [x.get_name() for x in img.get_layers()] == ["bg"] and visible(img) == before,
        [x.get_name() for x in img.get_layers()],
    )
    img.delete()

    # An expand's preview grows the canvas; Discard takes it back.
    img, bg = new_image()
    plan = logic.plan_expand(Extent(W, H), (8, 0, 8, 0), visible(img))
    grown = Bounds(0, 0, plan.grown.width, plan.grown.height)
    meta = {"task": "inpaint", "prompt": "wider", "region": list(grown), "placement": "top", "params": {}}
    session = plug.PreviewSession(img, stand_in_results(plug, grown, colours[:1]), meta, None, expand=plan)
    session.show(0)
    during = (img.get_width(), img.get_height(), offs(bg))
    session.discard()
    check(
        "preview:expand_discard_restores_canvas",
        during == (W + 16, H, (8, 0))
        and (img.get_width(), img.get_height(), offs(bg)) == (W, H, (0, 0))
        and len(img.get_layers()) == 1,
        f"during {during} after {(img.get_width(), img.get_height(), offs(bg))}",
    )
    img.delete()


def expand():
    """Story 3: Expand Canvas grows the canvas, the new area is generated, the old picture stays (beyond the seam)."""
    img, bg = new_image()
    before = visible(img)
    margins = (16, 0, 8, 12)
    status, count = run_proc(
        "python-fu-ace-bridge-expand-canvas",
        img,
        [bg],
        prompt="more meadow",
        left=margins[0],
        top=margins[1],
        right=margins[2],
        bottom=margins[3],
        seed=5,
        steps=2,
    )
    check("expand:status", status == "success" and count == 1, f"{status}: {count}")
    gw, gh = W + margins[0] + margins[2], H + margins[1] + margins[3]
    layers = img.get_layers()
    check(
        "expand:canvas_grown_and_layers_moved",
        (img.get_width(), img.get_height()) == (gw, gh) and offs(bg) == (margins[0], margins[1]),
        f"{img.get_width()}x{img.get_height()} bg at {offs(bg)}",
    )
    if len(layers) != 2:
        check("expand:one_result_layer", False, [x.get_name() for x in layers])
        img.delete()
        return
    result = layers[0]
    prov = provenance(result)
    check(
        "expand:one_result_layer",
        (*offs(result), result.get_width(), result.get_height()) == (0, 0, gw, gh)
        and prov is not None
        and prov[0].get("params", {}).get("expand") == list(margins),
        f"{[x.get_name() for x in layers]} {(*offs(result), result.get_width(), result.get_height())} {prov}",
    )
    after = visible(img)
    alpha = after[3::4]
    check("expand:new_area_filled", min(alpha) == 255, f"lowest alpha {min(alpha)}")
    seam = 16
    changed = 0
    for y in range(seam, H - seam):
        for x in range(seam, W - seam):
            old = before[(y * W + x) * 4 : (y * W + x) * 4 + 4]
            gx, gy = x + margins[0], y + margins[1]
            if after[(gy * gw + gx) * 4 : (gy * gw + gx) * 4 + 4] != old:
                changed += 1
    check("expand:old_picture_kept_inside_the_seam", changed == 0, f"{changed} pixels changed")
    img.delete()


def control_layer():
    """Story 4: a control layer picked for Local Edit runs as no_preprocess (the layer is the guide as it is)."""
    img, bg = new_image()
    sketch = add_layer(img, "sketch", 40, 30, pos=0, seed=200)
    sketch.set_visible(False)
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 12, 40, 30)
    status, count = run_proc(
        "python-fu-ace-bridge-local-edit", img, [bg], prompt="a cat", reference=sketch, seed=5, steps=2
    )
    prov = provenance(img.get_layers()[0])
    check(
        "control:no_preprocess",
        status == "success" and prov is not None and prov[0]["params"].get("mode") == "no_preprocess",
        f"{status}: {count} {prov}",
    )
    img.delete()


def recent_results_and_reuse():
    """Stories 5 and 6: the painter's words and recent prompts; Recent Results brings back this image's result from
    the daemon's history; reusing a result layer's prompt and seed."""
    img, bg = new_image()
    xcf = os.path.join(CONFIG["work_dir"], "painting.xcf")
    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(xcf), None)
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 12, 40, 30)
    status, count = run_proc(
        "python-fu-ace-bridge-inpaint", img, [bg], prompt="a straw hat", seed=21, steps=2, padding=4
    )
    made = img.get_layers()[0]
    check("recent:job", status == "success" and count == 1, f"{status}: {count}")
    prompts_file = os.path.join(os.environ["GIMP3_DIRECTORY"], "ace-bridge-gimp-prompts.json")
    recent = []
    if os.path.exists(prompts_file):
        with open(prompts_file) as fh:
            recent = json.load(fh)
    check("prompts:recent_kept", recent[:1] == ["a straw hat"], recent)
    img.remove_layer(made)
    Gimp.Selection.none(img)
    status, count = run_proc("python-fu-ace-bridge-recent-results", img, [bg])
    layers = img.get_layers()
    prov = provenance(layers[0]) if len(layers) == 2 else None
    region = context_region(Bounds(20, 12, 40, 30), Extent(W, H), 4)
    check(
        "recent:re_added",
        status == "success"
        and count == 1
        and prov is not None
        and prov[0]["seed"] == 21
        and prov[0]["task"] == "inpaint"
        and (*offs(layers[0]), layers[0].get_width(), layers[0].get_height()) == tuple(region),
        f"{status}: {count} {[x.get_name() for x in layers]} {prov}",
    )
    check(
        "prompts:painter_wording_sent",
        prov is not None and prov[0]["prompt"] == "A straw hat.",
        prov and prov[0]["prompt"],
    )
    if prov is None:
        img.delete()
        return
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 12, 40, 30)
    status, count = run_proc(
        "python-fu-ace-bridge-inpaint", img, [layers[0]], prompt="", seed=-1, steps=2, padding=4, reuse=True
    )
    again = provenance(img.get_layers()[0])
    check(
        "reuse:prompt_and_seed",
        status == "success" and again is not None and again[0]["seed"] == 21 and "straw hat" in again[0]["prompt"],
        f"{status}: {count} {again}",
    )
    status, message = run_proc("python-fu-ace-bridge-inpaint", img, [bg], prompt="", steps=2, reuse=True)
    check(
        "reuse:plain_layer_refused",
        status == "execution-error" and "no ACE++ provenance" in (message or ""),
        f"{status}: {message}",
    )
    other, other_bg = new_image()
    status, message = run_proc("python-fu-ace-bridge-recent-results", other, [other_bg])
    check(
        "recent:other_image_has_none",
        status == "execution-error" and "no ACE++ results" in (message or ""),
        f"{status}: {message}",
    )
    other.delete()
    img.delete()


for step in CONFIG["steps"]:
    try:
        if step == "tasks":
            for task in CONFIG["tasks"]:
                try:
                    task_scenario(task)
                except Exception:
                    check(f"{task['name']}:crashed", False, traceback.format_exc())
        else:
            globals()[step]()
    except Exception:
        check(f"{step}:crashed", False, traceback.format_exc())

with open(CONFIG["out"], "w") as fh:
    json.dump(CHECKS, fh, indent=1)
print("GIMP-CHECKS", sum(v[0] for v in CHECKS.values()), "of", len(CHECKS), "passed")
