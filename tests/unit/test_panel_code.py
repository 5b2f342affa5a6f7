"""The one client of the panel's two-step proof (`ace_protocol.auth.panel_code`), which `ace-bridge panel`, Krita's
"Open in panel" and GIMP's "Recent results" all use: the real daemon gives a working one-time path for its token;
a wrong token, or no daemon at all, is each its own typed error with a message that says which."""

from __future__ import annotations

import http.cookiejar
import urllib.request

import pytest
from ace_protocol.auth import PanelCodeError, PanelUnauthorized, panel_code
from daemon_fixture import free_port


def test_the_daemons_token_gets_a_one_time_panel_path_that_opens_the_panel(thread_daemon_factory):
    daemon = thread_daemon_factory()
    base = f"http://127.0.0.1:{daemon.port}"
    path = panel_code(base, daemon.token)
    assert path.startswith("/panel/?code=")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(base + path, timeout=30) as page:  # the code becomes a session; the panel page loads
        assert page.status == 200 and page.url == base + "/panel/"
    with pytest.raises(PanelUnauthorized, match="did not prove it holds your token"):
        panel_code(base, "not-the-token")


def test_no_daemon_is_a_plain_panel_code_error_not_an_unauthorized_one():
    with pytest.raises(PanelCodeError, match="cannot reach the daemon") as failed:
        panel_code(f"http://127.0.0.1:{free_port()}", "ace_token", timeout=5)
    assert not isinstance(failed.value, PanelUnauthorized)
