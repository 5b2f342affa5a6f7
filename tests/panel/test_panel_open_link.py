"""'Open in panel' from an editor's history (issue 17, story 6), in real Chromium: the link made by
ace_editor.panel_link (a one-time code, the result in the fragment) opens the panel with that result's viewer,
its before/after included; a wrong token or a job the daemon never kept is a clear PanelLinkError."""

from __future__ import annotations

import pytest
from ace_editor.panel_link import PanelLinkError, panel_link
from test_panel_browser import base_url, browser, client_for, finish, inpaint, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.panel


def test_open_in_panel_shows_that_result(thread_daemon_factory, page):  # noqa: F811
    daemon = thread_daemon_factory()
    client = client_for(daemon, "krita-artist", "krita")
    try:
        first = inpaint(client, "a red hat on the cat", seed=3)
        assert finish(first)[-1] == "done"
        second = inpaint(client, "a blue scarf", seed=4)
        assert finish(second)[-1] == "done"

        link = panel_link(daemon.url, daemon.token, first.id)
        assert link.startswith(base_url(daemon) + "/panel/?code=") and link.endswith(f"#entry={first.id}-0")
        page.goto(link)
        page.wait_for_selector("#viewer:not([hidden])")
        assert page.url == f"{base_url(daemon)}/panel/#entry={first.id}-0"  # the code left the address bar
        assert page.get_attribute("#viewer", "data-entry") == f"{first.id}-0"  # the older one, not the newest
        assert "a red hat on the cat" in page.text_content("#viewer-caption")
        page.wait_for_selector("#compare:not([hidden])")  # its before/after, as when opened by hand

        with pytest.raises(PanelLinkError, match="refused the token"):
            panel_link(daemon.url, "wrong-token", first.id)
        with pytest.raises(PanelLinkError, match="not a job the daemon kept"):
            panel_link(daemon.url, daemon.token, "k1")  # a local id: the job never reached the daemon
        with pytest.raises(PanelLinkError, match="not a daemon address"):
            panel_link("file:///tmp/x", daemon.token, first.id)
    finally:
        client.close()
