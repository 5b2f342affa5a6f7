"""Issue 17, story 7: "send to editor" from the panel, against a real daemon (tiny model) and the real shared
client: a Krita-like plug-in that stays connected gets the result at once and inserts it; a GIMP-like short-lived
plug-in finds it kept at its next run; an editor that is not connected, or too old, gets a clear refusal; only a
panel session can send."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request

import numpy as np
from ace_editor import inbox
from ace_protocol.client import BridgeClient
from integration_helpers import ellipse_mask, gradient_image, gray_payload, rgba_payload

from bridge_server.store.history import History


class Panel:
    """A person at the panel: `ace-bridge panel`'s one-time code traded for the session cookie, then JSON calls."""

    def __init__(self, daemon, *, logged_in: bool = True) -> None:
        self.base = f"http://127.0.0.1:{daemon.port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        if logged_in:
            req = urllib.request.Request(
                self.base + "/panel/api/code",
                data=b"{}",
                method="POST",
                headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
            )
            code = json.load(self.opener.open(req, timeout=10))["code"]
            self.opener.open(f"{self.base}/panel/?code={code}", timeout=10).read()

    def call(self, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def send(self, entry: str, client_id: str, document: str = "") -> tuple[int, dict]:
        return self.call("/panel/api/send", {"entry": entry, "client_id": client_id, "document": document})


def editor(daemon, client_id: str, name: str, offers: str) -> BridgeClient:
    client = BridgeClient(
        daemon.url,
        daemon.token,
        client_id=client_id,
        client_name=f"{name}-plugin",
        editor=name,
        offers=offers,
        reconnect_timeout=5,
    )
    client.connect()
    return client


def one_result(client: BridgeClient, prompt: str = "a red hat") -> str:
    handle = client.submit(
        "inpaint",
        prompt,
        image=rgba_payload(gradient_image()),
        mask=gray_payload(ellipse_mask()),
        params={"seed": 5, "steps": 2},
        label="cat.kra",
    )
    events = list(handle.events(timeout=120))
    assert events[-1].TYPE == "done", events[-1]
    client.ack(handle.id)
    return f"{handle.id}-0"


class Canvas:
    """What an editor's insert does, kept to pixels: open documents, each a stack of (name, x, y, RGBA array)."""

    def __init__(self, *docs: inbox.OpenDocument) -> None:
        self.docs = list(docs)
        self.layers: dict[str, list[tuple[str, int, int, np.ndarray]]] = {d.key: [] for d in docs}

    def insert(self, item: inbox.Delivery) -> str:
        doc = inbox.choose_document(item, self.docs)
        if doc is None:
            raise inbox.NoDocument("the test editor")
        x, y, w, h = inbox.placement(item, doc)
        pixels = np.frombuffer(item.rgba, np.uint8).reshape(h, w, 4)
        self.layers[doc.key].append((item.layer_name(), x, y, pixels))
        return doc.name


def stored_pixels(daemon, entry: str) -> np.ndarray:
    history = History(daemon.config.history_dir)
    history.open()
    return history.load_image(entry)


def wait_for(predicate, what: str, timeout: float = 20.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_krita_gets_a_history_result_from_the_panel_into_the_document_the_user_picked(thread_daemon_factory):
    daemon = thread_daemon_factory()
    krita = editor(daemon, "krita-send", "krita", inbox.LIVE)
    received: list = []
    krita.on_offer = received.append
    try:
        entry = one_result(krita)
        canvas = Canvas(
            inbox.OpenDocument("doc-cat", "cat.kra", active=False, width=96, height=64),
            inbox.OpenDocument("doc-dog", "dog.kra", active=True, width=200, height=100),
        )
        krita.set_documents(inbox.documents_wire(canvas.docs))
        panel = Panel(daemon)
        # The panel lists Krita with its open documents as a target.
        state = wait_for(
            lambda: (s := panel.call("/panel/api/state")[1])["targets"] and s["targets"][0]["documents"] and s,
            "Krita's documents in the panel",
        )
        target = next(t for t in state["targets"] if t["client_id"] == "krita-send")
        assert target["connected"] and target["mode"] == "live"
        assert [d["name"] for d in target["documents"]] == ["cat.kra", "dog.kra"]

        status, reply = panel.send(entry, "krita-send", "doc-dog")
        assert status == 200 and reply["ok"] and "Sent to Krita" in reply["message"], reply
        offer = wait_for(lambda: received and received[0], "the offer in Krita")
        ok, message = inbox.deliver(krita, offer, canvas.insert)
        assert ok, message
        # It went into the picked document (not the active or the one it came from), centred, pixels as stored.
        [(name, x, y, pixels)] = canvas.layers["doc-dog"]
        assert canvas.layers["doc-cat"] == []
        assert name.startswith("[ACE++] inpaint from panel: a red hat (seed 5)")
        assert (x, y) == ((200 - 96) // 2, (100 - 64) // 2)
        assert np.array_equal(pixels, stored_pixels(daemon, entry))
        # The panel hears that it was inserted, and where.
        done = wait_for(
            lambda: next((o for o in panel.call("/panel/api/state")[1]["offers"] if o["state"] != "sent"), None),
            "the editor's answer in the panel",
        )
        assert done["state"] == "inserted" and done["inserted_into"] == "dog.kra" and done["entry"] == entry
    finally:
        krita.close()


def test_gimp_takes_a_kept_result_at_its_next_run(thread_daemon_factory):
    daemon = thread_daemon_factory()
    gimp = editor(daemon, "gimp-send", "gimp", inbox.LATER)
    entry = one_result(gimp, "a blue vase")
    gimp.close()  # the plug-in's process ends after its run
    panel = Panel(daemon)
    wait_for(
        lambda: any(
            t["client_id"] == "gimp-send" and not t["connected"] for t in panel.call("/panel/api/state")[1]["targets"]
        ),
        "GIMP listed while not running",
    )
    status, reply = panel.send(entry, "gimp-send")
    assert status == 200 and "Kept for GIMP" in reply["message"], reply
    assert reply["offer"]["state"] == "kept"

    # The next run (a new process, the same client id) finds it waiting and inserts it into the image it came from.
    again = editor(daemon, "gimp-send", "gimp", inbox.LATER)
    try:
        assert again.welcome is not None and again.welcome.offers == [reply["offer"]["offer_id"]]
        canvas = Canvas(
            inbox.OpenDocument("7", "other.xcf", active=True, width=50, height=50),
            inbox.OpenDocument("3", "cat.kra", width=96, height=64),
        )
        outcomes = inbox.take_waiting(again, canvas.insert, wait=20)
        assert outcomes == [(True, "Inserted the result from the panel into cat.kra as a new layer.")]
        [(_, x, y, pixels)] = canvas.layers["3"]  # home: the job's label named this document
        assert (x, y) == (0, 0) and np.array_equal(pixels, stored_pixels(daemon, entry))
        wait_for(
            lambda: panel.call("/panel/api/state")[1]["offers"][0]["state"] == "inserted", "the answer in the panel"
        )
    finally:
        again.close()
    # Taken once: the run after that finds nothing.
    third = editor(daemon, "gimp-send", "gimp", inbox.LATER)
    try:
        assert third.welcome is not None and third.welcome.offers == []
        assert inbox.take_waiting(third, Canvas().insert, wait=0.5) == []
    finally:
        third.close()


def test_an_editor_that_is_not_connected_or_too_old_gets_a_clear_message(thread_daemon_factory):
    daemon = thread_daemon_factory()
    krita = editor(daemon, "krita-gone", "krita", inbox.LIVE)
    entry = one_result(krita)
    krita.close()
    old = editor(daemon, "krita-old", "krita", "")  # a plug-in from before offers
    cli = editor(daemon, "cli-run", "cli", "")  # `ace-bridge edit` is no editor to send to
    panel = Panel(daemon)
    try:
        listed = {t["client_id"] for t in panel.call("/panel/api/state")[1]["targets"]}
        assert "krita-old" in listed and "cli-run" not in listed
        wait_for(
            lambda: any(
                t["client_id"] == "krita-gone" and not t["connected"]
                for t in panel.call("/panel/api/state")[1]["targets"]
            ),
            "the disconnected Krita listed",
        )
        status, reply = panel.send(entry, "krita-gone")
        assert status == 409 and reply["error"] == "not_connected", reply
        assert reply["message"].startswith("Krita is not connected: open it with the ACE Bridge docker")
        status, reply = panel.send(entry, "krita-old")
        assert status == 409 and reply["error"] == "not_supported" and "ace-bridge install krita" in reply["message"]
        status, reply = panel.send(entry, "nobody")
        assert status == 409 and "not known" in reply["message"]
        status, reply = panel.send("0" * 32 + "-0", "krita-old")
        assert status == 404
        assert all(o["entry"] != entry for o in panel.call("/panel/api/state")[1]["offers"])  # nothing was queued
    finally:
        old.close()
        cli.close()


def test_only_a_panel_session_can_send(thread_daemon_factory):
    daemon = thread_daemon_factory()
    krita = editor(daemon, "krita-safe", "krita", inbox.LIVE)
    received: list = []
    krita.on_offer = received.append
    try:
        entry = one_result(krita)
        stranger = Panel(daemon, logged_in=False)
        status, reply = stranger.send(entry, "krita-safe")
        assert status == 401 and reply["error"] == "unauthorized"
        # The daemon's token alone is not a panel session either (it only buys a one-time code).
        req = urllib.request.Request(
            stranger.base + "/panel/api/send",
            data=json.dumps({"entry": entry, "client_id": "krita-safe"}).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("sent without a panel session")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        # A logged-in panel, but a form post (what a cross-site page could send without a preflight): refused.
        panel = Panel(daemon)
        form = urllib.request.Request(
            panel.base + "/panel/api/send",
            data=f"entry={entry}&client_id=krita-safe".encode(),
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            panel.opener.open(form, timeout=10)
            raise AssertionError("a form post was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 415)
        assert received == []
    finally:
        krita.close()
