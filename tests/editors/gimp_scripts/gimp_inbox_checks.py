"""Batch code run inside real GIMP 3 by tests/editors/test_gimp_inbox.py: a result sent from the panel to this
GIMP profile waits in the daemon; Fetch Finished Results, run on another image, puts it into the image it was made
for (poster.xcf), at its place, with its provenance; a second fetch finds nothing. Config: ACE_GIMP_CHECKS_CONFIG."""

import json
import os
import traceback

from gi.repository import Gegl, Gimp, Gio

CONFIG = json.load(open(os.environ["ACE_GIMP_CHECKS_CONFIG"]))
RGBA = "R'G'B'A u8"
PARASITE = "ace-bridge-provenance"
CHECKS = {}


def check(name, ok, detail=""):
    CHECKS[name] = [bool(ok), str(detail)[:2000]]


def new_image(w, h, path=None):
    img = Gimp.Image.new(w, h, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(img, "bg", w, h, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, 0)
    if path:
        img.set_file(Gio.File.new_for_path(path))
    return img, layer


def fetch(img, drawable):
    proc = Gimp.get_pdb().lookup_procedure("python-fu-ace-bridge-fetch-results")
    cfg = proc.create_config()
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", [drawable])
    cfg.set_property("url", CONFIG["url"])
    cfg.set_property("token", CONFIG["token"])
    res = proc.run(cfg)
    return res.index(0).value_nick, (res.index(1) if res.length() > 1 else None)


def run():
    current, bg = new_image(60, 40)
    poster, _ = new_image(96, 64, os.path.join(CONFIG["work_dir"], "poster.xcf"))
    status, value = fetch(current, bg)
    check("fetch_inserted_the_sent_result", status == "success" and value == 1, f"{status} value={value}")
    check("the_current_image_untouched", len(current.get_layers()) == 1, [x.get_name() for x in current.get_layers()])
    layers = poster.get_layers()
    top = layers[0]
    check(
        "one_new_layer_on_top_of_its_own_image",
        len(layers) == 2 and " from panel" in top.get_name(),
        [x.get_name() for x in layers],
    )
    x, y, w, h = CONFIG["region"]
    offsets = top.get_offsets()
    check(
        "at_the_place_it_was_made_for",
        (int(offsets[-2]), int(offsets[-1]), top.get_width(), top.get_height()) == (x, y, w, h),
        (offsets, top.get_width(), top.get_height()),
    )
    pixels = bytes(top.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, RGBA, Gegl.AbyssPolicy.NONE))
    expected = open(CONFIG["expected_rgba"], "rb").read()
    check("the_stored_pixels", pixels == expected, (len(pixels), len(expected)))
    parasite = top.get_parasite(PARASITE)
    record = json.loads(bytes(parasite.get_data()).decode("utf-8")) if parasite is not None else {}
    check(
        "with_its_provenance",
        record.get("job_id") == CONFIG["job_id"] and record.get("source") == "panel" and record.get("seed") == 9,
        record,
    )
    status, value = fetch(current, bg)
    check("taken_once", status == "success" and value == 0, f"{status} value={value}")


try:
    run()
except Exception:
    check("crashed", False, traceback.format_exc())
with open(CONFIG["out"], "w") as fh:
    json.dump(CHECKS, fh, indent=1)
print("GIMP-INBOX-CHECKS", sum(v[0] for v in CHECKS.values()), "of", len(CHECKS), "passed")
