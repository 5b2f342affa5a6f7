"""Batch code run inside the real GIMP 3 GUI by tests/editors/test_gimp_first_run.py: one ACE++ Inpaint in
Gimp.RunMode.INTERACTIVE on a displayed image with a selection, with no daemon running. The driver answers the
plug-in's first-run window and its dialog; the outcome goes to `<work>/first_run_result.json`.
Config: env ACE_GIMP_UI_CONFIG."""

import json
import os
import traceback

from gi.repository import Gegl, Gimp

CONFIG = json.load(open(os.environ["ACE_GIMP_UI_CONFIG"]))
WORK = CONFIG["work_dir"]
W, H = 96, 64
result = {"errors": []}
try:
    img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    bg = Gimp.Layer.new(img, "bg", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(bg, None, 0)
    buf = bg.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B'A u8", bytes((200, 120, 40, 255)) * (W * H))
    buf.flush()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *CONFIG["selection"])
    display = Gimp.Display.new(img)
    Gimp.displays_flush()
    proc = Gimp.get_pdb().lookup_procedure(CONFIG["procedure"])
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.INTERACTIVE)
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", [bg])
    cfg.set_property("prompt", "a green square")
    cfg.set_property("steps", 2)
    with open(os.path.join(WORK, "phase.txt"), "w") as fh:
        fh.write("run")
    res = proc.run(cfg)
    result["status"] = res.index(0).value_nick
    result["layers"] = [layer.get_name() for layer in img.get_layers()]
    display.delete()
except Exception:
    result["errors"].append(traceback.format_exc())
with open(os.path.join(WORK, "first_run_result.json"), "w") as fh:
    json.dump(result, fh, indent=1)
with open(os.path.join(WORK, "phase.txt"), "w") as fh:
    fh.write("done")
