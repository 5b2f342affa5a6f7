"""Test-only Krita plugin: when env ACE_PAINTER_TEST names a config file, play a painter's session in the docker.

Phase "paint": no daemon yet (the connection box shows), then the local one (it hides); "make the hat red" typed in
plain words; the same as a raw prompt behind Advanced; a Recent prompt put back with one click; a sketch layer picked
as the control layer of a local edit; the .kra saved and closed. Phase "reopen" (a new Krita process): the .kra
opened again, its history listed, one entry applied again, another's prompt and seed reused.
Writes name -> [ok, detail] checks (and what phase "reopen" needs) to the config's result file, then os._exit
(the shared runner_harness).
"""

import hashlib
import json
import urllib.request

from .runner_harness import start_on_window

HISTORY_ANNOTATION = "ace-bridge/history"


def _run(harness):
    from ace_bridge.docker import AceBridgeDocker
    from ace_bridge.document import node_id
    from ace_bridge.qt_compat import USER_ROLE, QObject, QtCore, QtGui
    from krita import Selection

    QDesktopServices, QUrl, pyqtSlot = QtGui.QDesktopServices, QtCore.QUrl, QtCore.pyqtSlot
    cfg, app, check, wait, out = harness.cfg, harness.app, harness.check, harness.wait, harness.out
    state = {"finished": {}}

    def layer_digest(doc, node, region):
        x, y, w, h = region
        return hashlib.sha256(bytes(node.pixelData(x, y, w, h))).hexdigest()

    def top_names(doc):
        """The layer stack, bottom first; the global selection mask left out (Krita moves it when it loads)."""
        return [n.name() for n in doc.rootNode().childNodes() if n.type() != "selectionmask"]

    def generate(docker, ctl):
        lid = docker.on_generate()
        record = ctl.pending[lid].record if lid in ctl.pending else None
        spec = ctl.pending[lid].spec if lid in ctl.pending else None
        yield from wait(lambda: lid in state["finished"])
        state["last"] = (lid, record, spec)

    def history_rows(docker):
        rows = []
        for i in range(docker.history.count()):
            r = docker.history.item(i).data(USER_ROLE)
            rows.append([r.job_id, r.prompt, r.instruction, r.results[0].seed])
        return rows

    def paint(docker, ctl):
        # Before any daemon answers: the connection box is there to point at one.
        yield from wait(lambda: "not reachable" in docker.connection.text(), 30)
        check(
            "connection_box_shown_without_daemon",
            not docker.settings_box.isHidden(),
            (docker.connection.text(), docker.settings_box.isHidden()),
        )
        docker.url_edit.setText(cfg["url"])
        docker.token_edit.setText(cfg["token"])
        docker._reconnect()
        yield from wait(lambda: bool(ctl.tasks))
        check(
            "connection_box_hidden_with_local_daemon",
            "local_edit" in ctl.tasks and docker.settings_box.isHidden() and not docker.remote_toggle.isChecked(),
            (docker.connection.text(), docker.settings_box.isHidden()),
        )
        doc = app.createDocument(96, 64, "painter", "RGBA", "U8", "", 72.0)
        app.activeWindow().addView(doc)
        bg = doc.rootNode().childNodes()[0]
        bg.setPixelData(bytes((200, 120, 40, 255)) * (96 * 64), 0, 0, 96, 64)
        sel = Selection()
        sel.select(30, 16, 40, 30, 255)
        doc.setSelection(sel)
        doc.refreshProjection()
        yield from wait(lambda: app.activeDocument() is not None and app.activeDocument().name() == "painter", 5)
        docker.task_box.setCurrentIndex(docker.task_box.findData("local_edit"))
        docker.seed_random.setChecked(False)
        docker.seed_spin.setValue(5)
        docker.steps_spin.setValue(2)

        # 1. Plain words: the product writes the ACE++ prompt.
        docker.prompt_box.set_text("make the hat red")
        before = [node_id(n) for n in doc.rootNode().childNodes()]
        yield from generate(docker, ctl)
        lid, record, _ = state["last"]
        sent = record.results[0].provenance.get("prompt") if record and record.results else None
        check(
            "painter_prompt_reaches_daemon",
            state["finished"].get(lid) == "done" and sent == "Make the hat red in {image} mask.",
            (state["finished"].get(lid), sent, docker.status.text()),
        )
        kids = doc.rootNode().childNodes()
        new = [n for n in kids if node_id(n) not in before]
        x, y, w, h = record.region
        alpha = bytes(new[0].pixelData(x, y, w, h))[3::4] if new else b""
        check(
            "result_layer_on_top_with_pixels",
            len(new) == 1 and node_id(kids[-1]) == node_id(new[0]) and "seed 5" in new[0].name() and any(alpha),
            (top_names(doc), sum(1 for a in alpha if a)),
        )
        out["first"] = {
            "job_id": record.job_id,
            "layer": new[0].name() if new else "",
            "region": list(record.region),
            "digest": layer_digest(doc, new[0], record.region) if new else "",
        }
        stored = json.loads(app.readSetting("ace_bridge", "settings", "{}"))
        docker.prompt_box.set_text("")
        actions = docker.prompt_box.recent_menu.actions()
        if actions:
            actions[0].trigger()
        check(
            "recent_prompt_one_click",
            docker.prompt_box.text() == "make the hat red" and stored.get("recent_prompts") == ["make the hat red"],
            (docker.prompt_box.text(), stored.get("recent_prompts")),
        )

        # 2. Advanced: the raw form goes exactly as typed.
        docker.prompt_box.advanced.setChecked(True)
        docker.prompt_box.set_text("Paint the hat red, studio light")
        yield from generate(docker, ctl)
        lid, record, _ = state["last"]
        sent = record.results[0].provenance.get("prompt") if record and record.results else None
        check(
            "advanced_prompt_sent_as_typed",
            state["finished"].get(lid) == "done"
            and sent == "Paint the hat red, studio light"
            and docker.template.isVisibleTo(docker.prompt_box)
            and "{image}" in docker.template.text(),
            (sent, docker.template.text()),
        )
        docker.prompt_box.advanced.setChecked(False)
        check("template_hidden_in_plain_mode", not docker.template.isVisibleTo(docker.prompt_box), "")

        # 3. A sketch layer as the structure guide: sent as the control image, no preprocessing.
        sketch = doc.createNode("sketch", "paintlayer")
        bar = bytes((0, 0, 0, 255)) * (4 * 44)
        sketch.setPixelData(bar, 44, 10, 4, 44)  # a black upright bar through the selection
        doc.rootNode().addChildNode(sketch, doc.rootNode().childNodes()[-1])
        doc.refreshProjection()
        docker.refresh_layers()
        docker.reference_box.setCurrentIndex(docker.reference_box.findData(node_id(sketch)))
        docker.prompt_box.set_text("make the hat red")
        check(
            "control_layer_picked",
            docker.reference_label.text() == "Control layer" and docker.reference_box.currentData() == node_id(sketch),
            (docker.reference_label.text(), docker.reference_box.currentText()),
        )
        before = [node_id(n) for n in doc.rootNode().childNodes()]
        yield from generate(docker, ctl)
        lid, record, spec = state["last"]
        x, y, w, h = record.region
        ref = spec.references[0] if spec and spec.references else None
        px = bytes(ref.data) if ref is not None else b""

        def at(cx, cy):
            i = ((cy - y) * w + (cx - x)) * 4
            return tuple(px[i : i + 4])

        check(
            "control_image_is_the_sketch_over_the_region",
            ref is not None
            and (ref.width, ref.height) == (w, h)
            and at(45, 30) == (0, 0, 0, 255)
            and at(35, 30)[3] == 0
            and spec.params.get("mode") == "no_preprocess",
            (record.region, ref and (ref.width, ref.height), px and (at(45, 30), at(35, 30)), spec and spec.params),
        )
        prov = record.results[0].provenance if record and record.results else {}
        recipe = prov.get("recipe") or {}
        added = [n for n in doc.rootNode().childNodes() if node_id(n) not in before]
        check(
            "daemon_used_the_control_image",
            state["finished"].get(lid) == "done"
            and (prov.get("params") or {}).get("mode") == "no_preprocess"
            and recipe.get("mode") == "no_preprocess"
            and recipe.get("control") is True
            and prov.get("prompt", "").count("{image}") == 1
            and len(added) == 1,
            (state["finished"].get(lid), prov.get("params"), recipe.get("mode"), recipe.get("control"), top_names(doc)),
        )

        # 4. The history goes into the .kra.
        rows = history_rows(docker)
        out["history"] = rows
        out["layers"] = top_names(doc)
        annotation = bytes(doc.annotation(HISTORY_ANNOTATION))
        doc.setBatchmode(True)
        saved = doc.saveAs(cfg["kra"])
        check(
            "kra_saved_with_history",
            saved and len(rows) == 3 and b'"ace-bridge-history"' in annotation,
            (saved, len(rows), len(annotation)),
        )
        doc.close()

    def reopen(docker, ctl):
        before = cfg["phase1"]
        doc = app.openDocument(cfg["kra"])
        app.activeWindow().addView(doc)
        yield from wait(lambda: docker.history.count() >= len(before["history"]), 20)
        rows = history_rows(docker)
        check("history_back_after_restart", rows == before["history"], (rows, before["history"]))
        check("layers_back_after_restart", top_names(doc) == before["layers"], (top_names(doc), before["layers"]))
        first = before["first"]
        for i in range(docker.history.count()):
            if docker.history.item(i).data(USER_ROLE).job_id == first["job_id"]:
                docker.history.setCurrentRow(i)
        ids_before = [node_id(n) for n in doc.rootNode().childNodes()]
        docker.on_reapply()
        doc.waitForDone()
        yield
        kids = doc.rootNode().childNodes()
        new = [n for n in kids if node_id(n) not in ids_before]
        original = next((n for n in kids if n.name() == first["layer"] and node_id(n) in ids_before), None)
        digest = layer_digest(doc, new[0], first["region"]) if new else ""
        check(
            "reapply_adds_the_same_layer",
            len(new) == 1
            and node_id(kids[-1]) == node_id(new[0])
            and new[0].name() == first["layer"]
            and digest == first["digest"]
            and original is not None
            and layer_digest(doc, original, first["region"]) == first["digest"],
            (top_names(doc), digest[:12], first["digest"][:12]),
        )
        # Open in panel: the browser gets a one-time panel link to this result (caught here by a URL handler).
        opened = []

        class Browser(QObject):
            @pyqtSlot(QUrl)
            def open(self, url):
                opened.append(url.toString())

        browser = Browser()
        QDesktopServices.setUrlHandler("http", browser, "open")
        link = docker.on_open_in_panel()
        QDesktopServices.unsetUrlHandler("http")
        page = None
        try:
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # as a browser: the cookie
            with opener.open(opened[0].split("#")[0], timeout=30) as reply:  # the daemon takes the code
                page = (reply.status, reply.geturl())
        except Exception as exc:
            page = repr(exc)
        check(
            "open_in_panel_link",
            link is not None
            and opened == [link]
            and link.endswith(f"#entry={first['job_id']}-0")
            and page == (200, cfg["url"].replace("ws://", "http://").split("/v1/")[0] + "/panel/"),
            (opened, page, docker.status.text()),
        )

        docker.prompt_box.set_text("")
        docker.seed_random.setChecked(True)
        docker.on_reuse()
        check(
            "reuse_prompt_and_seed",
            docker.prompt_box.text() == "make the hat red"
            and docker.seed_spin.value() == 5
            and not docker.seed_random.isChecked(),
            (docker.prompt_box.text(), docker.seed_spin.value(), docker.seed_random.isChecked()),
        )

    def steps():
        docker = AceBridgeDocker.instances[-1] if AceBridgeDocker.instances else None
        check("docker_exists", docker is not None, len(AceBridgeDocker.instances))
        if docker is None:
            return
        docker.show()
        docker.setVisible(True)
        ctl = docker.controller
        ctl.job_finished.connect(lambda lid, st: state["finished"].__setitem__(lid, st))
        # These stories keep every result at once; the preview strip has its own test (test_krita_preview.py).
        docker.preview_first_box.setChecked(False)
        if cfg["phase"] == "paint":
            yield from paint(docker, ctl)
        else:
            yield from reopen(docker, ctl)
        shot = cfg.get("screenshot")
        if shot:
            docker.grab().save(shot, "PNG")
        ctl.stop()

    harness.play(steps())


start_on_window("ACE_PAINTER_TEST", _run)
