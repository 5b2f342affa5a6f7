"""Test-only Krita plugin: when env ACE_GUI_TEST names a config file, play "send to editor" (issue 17, story 7) in
the real docker: Krita connects and reports its open documents; the panel's API (signed in as `ace-bridge panel`
does: token -> one-time code -> session cookie) sends a history result to this Krita, into the document "poster"
while another one is active; the result must land there as one new layer on top, with the stored pixels, and go
with one undo; the panel must hear where it went.

Like the other runners: a step machine on the shared runner_harness, name -> [ok, detail] checks written to the
result file.
"""

import http.cookiejar
import json
import urllib.request

from .runner_harness import start_on_window


class Panel:
    def __init__(self, base, token):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        req = urllib.request.Request(
            base + "/panel/api/code",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        code = json.load(self.opener.open(req, timeout=10))["code"]
        self.opener.open(f"{base}/panel/?code={code}", timeout=10).read()

    def state(self):
        return json.load(self.opener.open(self.base + "/panel/api/state", timeout=10))

    def send(self, body):
        req = urllib.request.Request(
            self.base + "/panel/api/send",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.load(self.opener.open(req, timeout=30))


def _run(harness):
    from ace_bridge.docker import AceBridgeDocker
    from ace_bridge.document import document_key

    cfg, app, check, wait = harness.cfg, harness.app, harness.check, harness.wait
    state = {"inserted": []}
    deadline_s = harness.deadline_s
    entry, (rw, rh) = cfg["entry"], cfg["size"]
    with open(cfg["expected_rgba"], "rb") as fh:
        expected = fh.read()

    def new_doc(name, width, height):
        doc = app.createDocument(width, height, name, "RGBA", "U8", "", 72.0)
        app.activeWindow().addView(doc)
        blue = bytes((40, 120, 200, 255)) * (width * height)
        doc.rootNode().childNodes()[0].setPixelData(blue, 0, 0, width, height)
        doc.refreshProjection()
        return doc

    def names(doc):
        return [n.name() for n in doc.rootNode().childNodes()]

    def steps():
        docker = AceBridgeDocker.instances[-1] if AceBridgeDocker.instances else None
        check("docker_exists", docker is not None, len(AceBridgeDocker.instances))
        if docker is None:
            return
        docker.show()
        ctl = docker.controller
        ctl.inbox.inserted.connect(lambda ok, message: state["inserted"].append((ok, message)))
        docker.url_edit.setText(cfg["url"])
        docker.token_edit.setText(cfg["token"])
        docker._reconnect()
        yield from wait(lambda: bool(ctl.tasks))
        client = ctl.worker.client
        check("connected_taking_offers", client is not None and client.takes_offers, docker.connection.text())
        if client is None:
            return
        poster = new_doc("poster", 200, 120)
        other = new_doc("other", 50, 50)  # the active one, made last
        poster_key = document_key(poster, create=False) or poster.fileName() or poster.name()
        panel = Panel(cfg["panel"], cfg["token"])
        listed = {}

        def krita_listed():
            for target in panel.state()["targets"]:
                if target["client_id"] == client.client_id:
                    listed["docs"] = [d["name"] for d in target["documents"]]
                    listed["active"] = [d["name"] for d in target["documents"] if d.get("active")]
            # Reported every 2 s: until the report after "other" became the active document.
            return "poster" in listed.get("docs", ()) and listed.get("active") == ["other"]

        for _ in range(deadline_s * 2):  # the plugin reports its documents within 2 s; ask twice a second
            if krita_listed():
                break
            yield from harness.ticks(10)
        check("panel_lists_kritas_documents", "poster" in listed.get("docs", ()), listed)
        check("panel_knows_the_active_one", listed.get("active") == ["other"], listed)

        before_other = names(other)
        reply = panel.send({"entry": entry, "client_id": client.client_id, "document": poster_key})
        check("panel_sent_it", reply.get("ok") and "Sent to Krita" in reply.get("message", ""), reply)
        yield from wait(lambda: bool(state["inserted"]))
        check("docker_inserted_it", state["inserted"] and state["inserted"][0][0], state["inserted"])
        top = poster.rootNode().childNodes()[-1]
        check(
            "one_new_layer_on_top_of_the_picked_document",
            len(poster.rootNode().childNodes()) == 2 and " from panel" in top.name(),
            names(poster),
        )
        check("the_active_document_untouched", names(other) == before_other, names(other))
        x, y = (200 - rw) // 2, (120 - rh) // 2
        bgra = bytes(top.pixelData(x, y, rw, rh))
        rgba = bytearray(bgra)
        rgba[0::4], rgba[2::4] = bgra[2::4], bgra[0::4]
        check("the_stored_pixels_centred_on_the_canvas", bytes(rgba) == expected, (len(bgra), len(expected)))
        outcome = {}

        def answered():
            for offer in panel.state()["offers"]:
                if offer["offer_id"] == reply["offer"]["offer_id"] and offer["state"] != "sent":
                    outcome.update(offer)
            return bool(outcome)

        for _ in range(40):
            if answered():
                break
            yield from harness.ticks(5)
        check(
            "panel_hears_where_it_went",
            outcome.get("state") == "inserted" and outcome.get("inserted_into") == "poster",
            outcome,
        )
        # Edit > Undo works on the active view's document: close "other", so the poster's view is the active one.
        other.setModified(False)
        other.close()
        yield from wait(lambda: app.activeDocument() is not None and app.activeDocument().name() == "poster", 10)
        yield from harness.ticks(10)
        yield from harness.undo_once(poster)
        check("one_undo_removes_it", len(poster.rootNode().childNodes()) == 1, names(poster))

    harness.play(steps())


start_on_window("ACE_GUI_TEST", _run)
