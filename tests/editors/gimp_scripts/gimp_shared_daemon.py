"""Batch code run inside real GIMP 3 (python-fu-eval) by tests/editors/test_shared_daemon.py.

One small image with a selection; waits (polling, with a deadline) for the host's go-file, then calls the
installed ACE++ procedure non-interactively through the PDB `jobs` times, one after the other (each call blocks
until its result is inserted, as a GIMP action does). Writes the new layers and their provenance parasites to the
JSON file named by the config. Config: env ACE_GIMP_SHARED_CONFIG (JSON).
"""

import json
import os
import time
import traceback

from gi.repository import Gegl, Gimp

CONFIG = json.load(open(os.environ["ACE_GIMP_SHARED_CONFIG"]))
W, H = 64, 48
PARASITE = "ace-bridge-provenance"
OUT = {"error": None, "runs": []}


def new_image():
    img = Gimp.Image.new(W, H, Gimp.ImageBaseType.RGB)
    layer = Gimp.Layer.new(img, "bg", W, H, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, 0)
    buf = layer.get_buffer()
    buf.set(Gegl.Rectangle.new(0, 0, W, H), "R'G'B'A u8", bytes((200, 120, 60, 255)) * (W * H))
    buf.flush()
    img.select_rectangle(Gimp.ChannelOps.REPLACE, 20, 10, 24, 20)
    return img, layer


def run_proc(img, bg, prompt):
    proc = Gimp.get_pdb().lookup_procedure(CONFIG["procedure"])
    cfg = proc.create_config()
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", [bg])
    # No steps: the procedure's "unset" default leaves them to the daemon (the panel's default steps).
    for key, value in {
        "url": CONFIG["url"],
        "token": CONFIG["token"],
        "prompt": prompt,
        "seed": 21,
        "count": 1,
        "padding": 4,
    }.items():
        cfg.set_property(key, value)
    res = proc.run(cfg)
    return res.index(0).value_nick, (res.index(1) if res.length() > 1 else None)


def main():
    img, bg = new_image()
    deadline = time.monotonic() + CONFIG["deadline_s"]
    while not os.path.exists(CONFIG["go_file"]):
        if time.monotonic() > deadline:
            raise TimeoutError("GIMP: the host never wrote the go-file")
        time.sleep(0.02)  # polling a file the host writes once
    for i in range(CONFIG["jobs"]):
        status, value = run_proc(img, bg, f"gimp job {i + 1}")
        OUT["runs"].append({"status": status, "value": str(value)})
    layers = []
    for layer in img.get_layers():
        parasite = layer.get_parasite(PARASITE)
        prov = json.loads(bytes(parasite.get_data()).decode("utf-8")) if parasite is not None else None
        server = (prov or {}).get("server") or {}
        layers.append(
            {
                "name": layer.get_name(),
                "job_id": (prov or {}).get("job_id"),
                "editor": (prov or {}).get("editor"),
                "provenance": prov is not None,
                "steps": (server.get("params") or {}).get("steps"),
            }
        )
    OUT["layers"] = layers
    OUT["version"] = Gimp.version()
    img.delete()


try:
    main()
except Exception:
    OUT["error"] = traceback.format_exc()
with open(CONFIG["out"], "w") as fh:
    json.dump(OUT, fh, indent=1)
print("GIMP-SHARED done", OUT["error"] is None)
