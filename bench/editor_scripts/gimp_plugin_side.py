"""Batch code run inside GIMP 3 (python-fu-eval) for bench/plugin_side.py. Config: env ACE_BENCH_CONFIG (JSON).

Builds an N x N RGB u8 image (gradient background + a half-transparent layer, the active one) with a feathered
elliptical selection, then times what an ACE++ procedure's `run_action` does before the job is on its way, with
the plug-in's own functions (acegimp_gimp / acegimp_logic): selection bounds + plan, the visible-image read
(`read_visible`) or the active-layer read (`read_drawable`), the selection read (`read_selection_mask`), the
params, the per-run connect (the plug-in runs once per Generate, so it connects every time), and `submit` until
`accepted`. Writes {"runs": [...], ...} to config["out"].
"""

import json
import os
import sys
import time
import traceback

from gi.repository import Gegl, Gimp

CONFIG = json.load(open(os.environ["ACE_BENCH_CONFIG"]))
sys.path[:0] = [CONFIG["plugin_dir"], CONFIG["plugin_dir"] + "/_vendor", CONFIG["scripts_dir"]]
T = time.perf_counter


OUT = {"runs": [], "error": None, "editor": "gimp " + Gimp.version()}

try:
    import acegimp_gimp as ag
    import acegimp_logic as logic
    from ace_protocol.codec import encode
    from ace_protocol.geometry import Extent
    from ace_protocol.messages import Submit
    from bench_pixels import gradient_rows, mask_impl, time_sends

    n = int(CONFIG["size"])
    t0 = T()
    img = Gimp.Image.new(n, n, Gimp.ImageBaseType.RGB)
    layers = []
    for i, name in enumerate(("bg", "paint")):
        layer = Gimp.Layer.new(img, name, n, n, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        img.insert_layer(layer, None, 0)
        data = bytearray(gradient_rows(n, n, order="rgba"))
        if i:
            data[3::4] = b"\x80" * (n * n)
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, n, n), ag.RGBA, bytes(data))
        buf.flush()
        del data, buf
        layers.append(layer)
    active = layers[1]
    margin = int(n * 0.06)
    img.select_ellipse(Gimp.ChannelOps.REPLACE, margin, margin, n - 2 * margin, n - 2 * margin)
    Gimp.Selection.feather(img, max(2.0, n / 64))
    OUT["setup_s"] = T() - t0

    action = logic.ACTIONS_BY_PROCEDURE["python-fu-ace-bridge-inpaint"]
    from ace_protocol.client import BridgeClient

    for rep in range(int(CONFIG["repeats"])):
        for source, transport in [(s, t) for s in ("image", "layer") for t in ("shm", "frames")]:
            settings = logic.Settings(seed=1, steps=1, source="layer" if source == "layer" else "visible")
            t_start = T()
            plan = logic.plan_job(action, settings, Extent(img.get_width(), img.get_height()), ag.selection_bounds(img))
            t_plan = T() - t_start
            t0 = T()
            if plan.placement == "above-active":
                image_payload = ag.read_drawable(active, plan.region)
            else:
                image_payload = ag.read_visible(img, plan.region)
            t_image = T() - t0
            t0 = T()
            mask = ag.read_selection_mask(img, plan.region) if plan.selection else logic.full_mask(plan.region)
            t_mask = T() - t0
            t0 = T()
            params = logic.build_params(action, settings, plan)
            t_params = T() - t0
            t0 = T()
            frame = encode(
                Submit(
                    id="r0",
                    task=action.task,
                    prompt="bench",
                    image=image_payload,
                    mask=mask,
                    references=[],
                    params=dict(params),
                    label="bench",
                )
            )
            t_encode = T() - t0
            size = len(frame)
            del frame
            t0 = T()
            # A stable client id per transport, as the plug-in keeps one per GIMP profile.
            client = BridgeClient(
                CONFIG["url"],
                CONFIG["token"],
                client_name=logic.CLIENT_NAME,
                client_id=f"gimp-bench-{transport}",
                editor=f"gimp {Gimp.version()}",
                shared_memory=transport == "shm",
            )
            client.connect()
            t_connect = T() - t0
            if transport == "shm":
                OUT["shared_memory"] = {"active": client.shared_memory_active, "problem": client.shared_memory_problem}
            sends = {}
            time_sends(client, sends)
            OUT["apply_mask"] = mask_impl()
            t0 = T()
            job = client.submit(
                action.task, "bench", image=image_payload, mask=mask, references=[], params=params, label="bench"
            )
            t_submit = T() - t0
            t_send = sends["sent_at"] - t0
            job.cancel()
            kinds = [ev.TYPE for ev in job.events(timeout=300)]
            client.ack(job.id)
            client.close()
            OUT["runs"].append(
                {
                    "rep": rep,
                    "source": source,
                    "transport": transport,
                    "region": list(plan.region),
                    "format": image_payload.format,
                    "read_image_s": t_image,
                    "read_mask_s": t_mask,
                    "payloads_s": t_plan + t_params,
                    "encode_s": t_encode,
                    "connect_s": t_connect,
                    "submit_s": t_submit,
                    "send_s": t_send,
                    "total_s": t_plan + t_image + t_mask + t_params + t_connect + t_submit,
                    "frame_bytes": size,
                    "job_end": kinds[-1] if kinds else None,
                }
            )
            del image_payload, mask
    img.delete()
except Exception:
    OUT["error"] = traceback.format_exc()

with open(CONFIG["out"], "w") as fh:
    json.dump(OUT, fh, indent=1)
print("ACE-BENCH", len(OUT["runs"]), "runs", "error" if OUT["error"] else "ok")
