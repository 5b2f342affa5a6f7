"""The panel as a companion (issue 17, story 7), in real Chromium: "Send to Krita" on a history result puts it into
the document the user picked in a connected editor (a real shared client receives it and inserts it; the panel
shows where it went), and an editor that is no longer connected gets a clear message instead. Screenshot:
artifacts/panel/send_to_editor.png (PANEL_DOCS_SCREENSHOT=1 also refreshes docs/panel-send.png)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from ace_editor import inbox
from ace_protocol.client import BridgeClient
from test_panel_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    REPO,
    browser,
    finish,
    inpaint,
    open_panel,
    page,
    wait_thumbnail,
)

from bridge_server.store.history import History

pytestmark = pytest.mark.panel


def krita_plugin(daemon) -> tuple[BridgeClient, list]:
    """The shared client as Krita's docker runs it: offers taken live, its open documents reported."""
    client = BridgeClient(
        daemon.url,
        daemon.token,
        client_id="krita-companion",
        client_name="krita-plugin",
        editor="krita",
        offers=inbox.LIVE,
        reconnect_timeout=5,
    )
    received: list = []
    client.on_offer = received.append
    client.connect()
    return client, received


def wait_until(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_send_to_krita_from_the_panel_and_a_clear_message_once_krita_is_gone(thread_daemon_factory, page):  # noqa: F811
    daemon = thread_daemon_factory()
    krita, received = krita_plugin(daemon)
    docs = [
        inbox.OpenDocument("key-cat", "cat.kra", active=True, width=96, height=64),
        inbox.OpenDocument("key-poster", "poster.kra", width=300, height=200),
    ]
    layers: dict[str, list] = {d.key: [] for d in docs}

    def insert(item: inbox.Delivery) -> str:
        doc = inbox.choose_document(item, docs)
        assert doc is not None
        x, y, w, h = inbox.placement(item, doc)
        layers[doc.key].append((item.layer_name(), x, y, np.frombuffer(item.rgba, np.uint8).reshape(h, w, 4)))
        return doc.name

    try:
        handle = inpaint(krita, "a red hat on the cat", seed=4)
        assert finish(handle)[-1] == "done"
        krita.ack(handle.id)
        entry = f"{handle.id}-0"
        krita.set_documents(inbox.documents_wire(docs))

        open_panel(page, daemon)
        wait_thumbnail(page, entry)
        item = page.locator(f".item[data-entry='{entry}']")
        select = item.locator("select.send-to")
        # Krita's open documents are the choices; picking one names the editor on the button.
        page.wait_for_function(
            "entry => document.querySelectorAll(`.item[data-entry='${entry}'] select.send-to option`).length === 2",
            arg=entry,
        )
        labels = [o.strip() for o in select.locator("option").all_text_contents()]
        assert labels == ["Krita · cat.kra (active)", "Krita · poster.kra"]
        select.select_option(label="Krita · poster.kra")
        button = item.locator("button.send")
        assert button.text_content() == "Send to Krita"
        button.click()

        offer = wait_until(lambda: received and received[0], "the offer in the Krita client")
        assert offer.entry == entry and offer.document == "key-poster"
        ok, message = inbox.deliver(krita, offer, insert)
        assert ok, message
        page.wait_for_selector(f".item[data-entry='{entry}'][data-offer='inserted']")
        assert "Inserted into poster.kra (Krita)" in item.locator(".send-msg").text_content()
        [(name, x, y, pixels)] = layers["key-poster"]
        assert layers["key-cat"] == []
        assert name == "[ACE++] inpaint from panel: a red hat on the cat (seed 4)"
        assert (x, y) == ((300 - 96) // 2, (200 - 64) // 2)
        history = History(daemon.config.history_dir)
        history.open()
        assert np.array_equal(pixels, history.load_image(entry))
        page.screenshot(path=str(ARTIFACTS / "send_to_editor.png"), full_page=True)
        if os.environ.get("PANEL_DOCS_SCREENSHOT") == "1":
            item.screenshot(path=str(REPO / "docs" / "panel-send.png"))

        # Krita quits: the panel says so, and sending now explains what to do instead of failing silently.
        krita.close()
        page.wait_for_function(
            "entry => [...document.querySelectorAll(`.item[data-entry='${entry}'] select.send-to option`)]"
            ".some(o => o.textContent === 'Krita (not connected)')",
            arg=entry,
        )
        button.click()
        page.wait_for_selector(f".item[data-entry='{entry}'][data-offer='refused']")
        shown = item.locator(".send-msg").text_content()
        assert shown.startswith("Krita is not connected: open it with the ACE Bridge docker"), shown
        assert len(received) == 1
    finally:
        krita.close()
