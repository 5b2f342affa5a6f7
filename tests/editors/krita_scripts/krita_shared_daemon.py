"""Runs inside Krita (`kritarunner -s krita_shared_daemon -f main -- CONFIG.json`) for test_shared_daemon.py.

Drives the docker's own `Controller` (the Generate flow without widgets: document.py reads, BridgeWorker sends
each job on its own thread, results come back through Qt signals and are inserted by layers.py into the document
they came from). Two Generate presses on one small document with a selection, against a daemon whose queue is
paused, so both jobs wait in the queue together. Then it pumps Qt events until both jobs end and writes what the
document holds (new layers, their provenance) and what the controller saw to RESULT.json.
"""

import json
import os
import sys
import time
import traceback

W, H = 64, 48
SELECTION = (16, 12, 24, 18)


def main(args):
    config = json.load(open(args[-1]))
    out = {"error": None}
    try:
        os.environ["ACE_BRIDGE_NO_REGISTER"] = "1"
        sys.path[:0] = config["paths"]
        from ace_bridge.docker import Controller
        from ace_bridge.document import node_id
        from ace_bridge.layers import read_provenance
        from ace_bridge.model import Settings
        from ace_bridge.qt_compat import QtCore  # PyQt5 on Krita 5, PyQt6 on Krita 6
        from krita import Krita, Selection

        QCoreApplication = QtCore.QCoreApplication

        app = Krita.instance()
        app.setBatchmode(True)
        out["krita_version"] = app.version()
        doc = app.createDocument(W, H, "krita-shared", "RGBA", "U8", "", 72.0)
        root = doc.rootNode()
        bg = root.childNodes()[0]
        bg.setPixelData(bytes((90, 140, 200, 255)) * (W * H), 0, 0, W, H)
        sel = Selection()
        sel.select(*SELECTION, 255)
        doc.setSelection(sel)
        doc.refreshProjection()
        doc.waitForDone()
        app.setActiveDocument(doc)
        before = [node_id(n) for n in root.childNodes()]

        settings = Settings(
            client_id=config["client_id"],
            url=config["url"],
            token=config["token"],
            task=config["task"],
            source="image",
            seed_mode="fixed",
            seed=11,
            count=1,
            padding=4,
            feather=0,
        )  # steps left at "default": the panel's setting applies
        controller = Controller(settings)
        controller.preview_first = False  # results straight in as layers: this story is about sharing the daemon
        finished = {}
        controller.job_finished.connect(lambda lid, state: finished.__setitem__(lid, state))
        deadline = time.monotonic() + config["deadline_s"]

        def pump_until(what, cond):
            while not cond():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Krita: timed out waiting for {what}")
                QCoreApplication.processEvents()
                time.sleep(0.01)  # pumping Qt's queue; the condition is re-checked each turn

        controller.start()
        pump_until("the daemon's welcome", lambda: bool(controller.tasks))
        local_ids = [controller.generate(doc, f"krita job {i + 1}") for i in range(config["jobs"])]
        out["local_ids"] = local_ids
        pump_until("both jobs to end", lambda: all(lid in finished for lid in local_ids))
        out["finished"] = finished
        out["records"] = [
            {"job_id": r.job_id, "state": r.state, "message": r.message, "layer_ids": list(r.layer_ids or [])}
            for r in controller.history
        ]
        doc.waitForDone()
        store = read_provenance(doc)
        layers = []
        for n in root.childNodes():
            nid = node_id(n)
            if nid in before:
                continue
            rec = store.layers.get(nid, {}) if hasattr(store, "layers") else {}
            server = rec.get("server") or {}
            layers.append(
                {
                    "id": nid,
                    "name": n.name(),
                    "job_id": rec.get("job_id"),
                    "editor": server.get("editor"),
                    "steps": (server.get("params") or {}).get("steps"),
                }
            )
        out["new_layers"] = layers
        out["all_layers"] = [n.name() for n in root.childNodes()]
        controller.stop()
        doc.setModified(False)
        doc.close()
    except Exception:
        out["error"] = traceback.format_exc()
    with open(config["result"], "w") as fh:
        json.dump(out, fh, indent=1)
    sys.stdout.flush()
    os._exit(0 if out["error"] is None else 1)
