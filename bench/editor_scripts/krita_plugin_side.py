"""Runs inside Krita (`kritarunner -s krita_plugin_side -f main -- CONFIG.json`) for bench/plugin_side.py.

Builds an N x N RGBA/U8 document (gradient background + a half-transparent paint layer) with a soft elliptical
selection, then times what Generate does, with the plugin's own code: `document.read_context` (the call
docker.py's `generate` makes) for the visible image and for the active layer, and the protocol client's `submit`
until `accepted`. `read_context` runs on a document wrapper that times the libkis pixel calls it makes, so the
read splits into image read / selection read / the rest (QByteArray -> bytes copies and ImagePayloads).
Writes {"runs": [...], ...} to config["result"]; kritarunner's exit code means nothing.
"""

import json
import os
import sys
import time
import traceback

T = time.perf_counter


class Timed:
    """Delegates to a libkis object; the named pixel calls add their wall time to `sink[key]`."""

    def __init__(self, real, sink, calls):
        self._real, self._sink, self._calls = real, sink, calls

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        key = self._calls.get(name)
        if key is None:
            return attr

        def timed(*args):
            t0 = T()
            out = attr(*args)
            self._sink[key] = self._sink.get(key, 0.0) + T() - t0
            return out

        return timed


class TimedDoc(Timed):
    def selection(self):
        t0 = T()
        sel = self._real.selection()
        self._sink["mask"] = self._sink.get("mask", 0.0) + T() - t0
        return None if sel is None else Timed(sel, self._sink, {"pixelData": "mask"})


def main(args):
    config = json.load(open(args[-1]))
    out = {"runs": [], "error": None}
    try:
        os.environ["ACE_BRIDGE_NO_REGISTER"] = "1"
        sys.path[:0] = config["paths"]
        import ace_bridge.worker  # noqa: F401  (what Generate submits through; sets up the WebSocket masking)
        from ace_bridge.document import read_context
        from ace_bridge.model import Source
        from ace_protocol.client import BridgeClient
        from ace_protocol.codec import encode
        from ace_protocol.messages import Submit
        from bench_pixels import gradient_rows, mask_impl, soft_ellipse, time_sends
        from krita import Krita, Selection

        n = int(config["size"])
        app = Krita.instance()
        app.setBatchmode(True)
        out["editor"] = "krita " + app.version()
        t0 = T()
        doc = app.createDocument(n, n, "ace-bench", "RGBA", "U8", "", 72.0)
        root = doc.rootNode()
        root.childNodes()[0].setPixelData(gradient_rows(n, n), 0, 0, n, n)
        layer = doc.createNode("paint", "paintlayer")
        over = bytearray(gradient_rows(n, n))
        over[3::4] = b"\x80" * (n * n)
        layer.setPixelData(bytes(over), 0, 0, n, n)
        del over
        root.addChildNode(layer, None)
        sel = Selection()
        sel.setPixelData(soft_ellipse(n, n, n / 2, n / 2, n * 0.44, n * 0.44, max(2.0, n / 64)), 0, 0, n, n)
        doc.setSelection(sel)
        doc.refreshProjection()
        doc.waitForDone()
        out["setup_s"] = T() - t0

        clients = {}
        sends = {}
        for transport in ("shm", "frames"):
            clients[transport] = BridgeClient(
                config["url"],
                config["token"],
                client_name="ace-bench",
                client_id=f"ace-bench-{transport}",
                editor="krita " + app.version(),
                shared_memory=transport == "shm",
            )
            clients[transport].connect()
            time_sends(clients[transport], sends)
        out["shared_memory"] = {
            "active": clients["shm"].shared_memory_active,
            "problem": clients["shm"].shared_memory_problem,
        }
        out["apply_mask"] = mask_impl()
        for rep in range(int(config["repeats"])):
            for source, transport in [(s, t) for s in ("image", "layer") for t in ("shm", "frames")]:
                client = clients[transport]
                sink = {}
                proxy = TimedDoc(doc, sink, {"pixelData": "image", "refreshProjection": "refresh"})
                active = Timed(layer, sink, {"projectionPixelData": "image"})
                t0 = T()
                read = read_context(proxy, Source(source), None, [], active=active)
                t_read = T() - t0
                params = {"seed": 1, "steps": 1}
                t0 = T()
                frame = encode(
                    Submit(
                        id="r0",
                        task="inpaint",
                        prompt="bench",
                        image=read.image,
                        mask=read.mask,
                        references=[],
                        params=dict(params),
                        label="bench",
                    )
                )
                t_encode = T() - t0
                size = len(frame)
                del frame
                sends.clear()
                t0 = T()
                job = client.submit(
                    "inpaint", "bench", image=read.image, mask=read.mask, references=[], params=params, label="bench"
                )
                t_submit = T() - t0
                t_send = sends["sent_at"] - t0
                job.cancel()
                kinds = [ev.TYPE for ev in job.events(timeout=300)]
                client.ack(job.id)
                image_s = sink.get("image", 0.0) + sink.get("refresh", 0.0)
                out["runs"].append(
                    {
                        "rep": rep,
                        "source": source,
                        "transport": transport,
                        "region": list(read.region),
                        "format": read.image.format,
                        "read_image_s": image_s,
                        "refresh_s": sink.get("refresh", 0.0),
                        "read_mask_s": sink.get("mask", 0.0),
                        "payloads_s": t_read - image_s - sink.get("mask", 0.0),
                        "read_context_s": t_read,
                        "encode_s": t_encode,
                        "submit_s": t_submit,
                        "send_s": t_send,
                        "total_s": t_read + t_submit,
                        "frame_bytes": size,
                        "job_end": kinds[-1] if kinds else None,
                    }
                )
                del read
        for client in clients.values():
            client.close()
    except Exception:
        out["error"] = traceback.format_exc()
    with open(config["result"], "w") as fh:
        json.dump(out, fh, indent=1)
    sys.stdout.flush()
    os._exit(0)
