"""Batch code run inside the real GIMP 3 GUI (gimp-3.0 under Xvfb) by tests/editors/test_gimp_interactive.py.

Runs one ACE++ procedure in Gimp.RunMode.INTERACTIVE several times, each on a fresh displayed image with a
rectangular selection. Before each run it writes the run's name to `<work>/phase.txt`; the driver
(gimp_ui_driver.py) then finds the plug-in's dialog on screen and answers it with real key events. The outcome of
every run (status, new layers, their provenance) goes to `<work>/ui_results.json`. Config: env ACE_GIMP_UI_CONFIG.
"""

import json
import os
import traceback

from gi.repository import Gegl, Gimp

CONFIG = json.load(open(os.environ["ACE_GIMP_UI_CONFIG"]))
WORK = CONFIG["work_dir"]
W, H = 96, 64
RGBA = "R'G'B'A u8"
RESULTS = {"runs": {}, "errors": []}


def write_atomic(name, text):
    tmp = os.path.join(WORK, name + ".part")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(WORK, name))


def new_image():
    img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(img, "bg", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, 0)
    pixels = bytearray(W * H * 4)
    for y in range(H):
        for x in range(W):
            i = (y * W + x) * 4
            pixels[i : i + 4] = bytes((x * 255 // (W - 1), y * 255 // (H - 1), 128, 255))
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, W, H), RGBA, bytes(pixels))
    buf.flush()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *CONFIG["selection"])
    display = Gimp.Display.new(img)
    Gimp.displays_flush()
    return img, layer, display


def provenance(item):
    parasite = item.get_parasite(CONFIG["parasite"])
    if parasite is None:
        return None
    return json.loads(bytes(parasite.get_data()).decode("utf-8"))


def with_history(img, bg):
    """This image saved under a name, with one result of it in the daemon's history (an earlier non-interactive job
    whose layer was since deleted): what Recent Results brings back."""
    from gi.repository import Gio

    Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, img, Gio.File.new_for_path(os.path.join(WORK, "painting.xcf")), None)
    proc = Gimp.get_pdb().lookup_procedure(CONFIG["procedure"])
    cfg = proc.create_config()
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", [bg])
    for key, value in CONFIG["history_job"].items():
        cfg.set_property(key, value)
    status = proc.run(cfg).index(0).value_nick
    if status != "success":
        raise RuntimeError(f"the job for the history failed: {status}")
    img.remove_layer(img.get_layers()[0])
    Gimp.displays_flush()


def run_interactive(name, props, procedure=None, setup=None):
    img, bg, display = new_image()
    try:
        if setup == "history":
            with_history(img, bg)
        before = {layer.get_id() for layer in img.get_layers()}
        proc = Gimp.get_pdb().lookup_procedure(procedure or CONFIG["procedure"])
        cfg = proc.create_config()
        cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
        cfg.set_property("image", img)
        cfg.set_core_object_array("drawables", [bg])
        for key, value in props.items():
            cfg.set_property(key, value)
        write_atomic("phase.txt", name)
        res = proc.run(cfg)
        status = res.index(0).value_nick
        layers = img.get_layers()
        new = [layer for layer in layers if layer.get_id() not in before]
        info = {
            "status": status,
            "layers": [layer.get_name() for layer in layers],
            "new": [],
            "canvas": [img.get_width(), img.get_height()],
            "offsets": {layer.get_name(): [int(v) for v in layer.get_offsets()[-2:]] for layer in layers},
        }
        if res.length() > 1 and status == "success":
            info["value"] = res.index(1)
        for layer in new:
            offsets = layer.get_offsets()
            info["new"].append(
                {
                    "name": layer.get_name(),
                    "offsets": [int(offsets[-2]), int(offsets[-1])],
                    "size": [layer.get_width(), layer.get_height()],
                    "on_top": layers[0].get_id() == layer.get_id(),
                    "provenance": provenance(layer),
                    "is_group": layer.is_group(),
                }
            )
        RESULTS["runs"][name] = info
    finally:
        display.delete()  # the image goes with its last display


for run in CONFIG["runs"]:
    try:
        run_interactive(run["name"], run.get("props", {}), run.get("procedure"), run.get("setup"))
    except Exception:
        RESULTS["errors"].append(f"{run['name']}: {traceback.format_exc()}")
write_atomic("phase.txt", "done")
write_atomic("ui_results.json", json.dumps(RESULTS, indent=1))
print("GIMP-UI-BATCH done", sorted(RESULTS["runs"]), "errors", len(RESULTS["errors"]))
