"""`ace-bridge panel`: find (or start) the daemon, get a one-time code, open the panel in a window or the browser.

The window is pywebview (Qt or GTK backend, whichever is installed). Without pywebview the panel opens in the
default browser, and the command says why. `serve --panel` starts this same command as a child process, because a
GUI toolkit wants the main thread of its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path
from urllib.parse import urlsplit

from ace_protocol.discovery import config_dir, read_runtime, read_token, resolve

START_TIMEOUT_S = 120.0
SELFTEST_ENV = "ACE_BRIDGE_PANEL_SELFTEST"  # set by the tests: report that the page rendered, then close


class PanelError(Exception):
    pass


def http_base(ws_url: str) -> str:
    """ws://127.0.0.1:8717/v1/ws -> http://127.0.0.1:8717"""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def daemon_alive(base: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v1/health", timeout=timeout) as reply:
            return json.loads(reply.read()).get("ok") is True
    except (OSError, ValueError) as exc:
        if os.environ.get("ACE_BRIDGE_DEBUG"):
            print(f"ace-bridge panel: health check of {base} failed: {exc!r}", file=sys.stderr)
        return False


def request_code(base: str, token: str, timeout: float = 10.0) -> str:
    """Trade proof of the token (which only this user can read) for a one-time panel link; returns the full URL.

    The token never travels: the daemon first proves it holds the token, and only then does this side send its own
    proof (ace_protocol.auth `panel_code`, the same step the editors' "Open in panel" takes). A program that took
    the daemon's port while it was down gets a nonce and a token id, nothing more, and no second request."""
    from ace_protocol.auth import PanelCodeError, PanelUnauthorized, panel_code

    try:
        return base + panel_code(base, token, timeout)
    except PanelUnauthorized as exc:
        raise PanelError(f"{exc}; check `ace-bridge token` or --token") from None
    except PanelCodeError as exc:
        raise PanelError(str(exc)) from None


def start_daemon(timeout: float = START_TIMEOUT_S) -> str:
    """Start `ace-bridge serve` in the background and wait for its runtime.json; returns its WebSocket URL."""
    folder = config_dir()
    before = read_runtime(folder) or {}
    log_path = folder / "serve.log"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"ace-bridge panel: the daemon is not running; starting it (log: {log_path})", file=sys.stderr)
    with open(log_path, "ab") as log:
        kwargs: dict = {"stdout": log, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # keeps running when the panel window closes
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        process = subprocess.Popen([sys.executable, "-m", "bridge_server.cli", "serve"], **kwargs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PanelError(f"the daemon exited with code {process.returncode}; see {log_path}")
        runtime = read_runtime(folder) or {}
        if runtime.get("pid") == process.pid and runtime != before and daemon_alive(http_base(runtime["url"])):
            return str(runtime["url"])
        time.sleep(0.1)  # waiting for another process to write a file
    raise PanelError(f"the daemon did not start within {timeout:.0f} s; see {log_path}")


def panel_url(args: argparse.Namespace) -> str:
    endpoint = resolve(getattr(args, "url", None), getattr(args, "token", None), getattr(args, "port", None))
    base = http_base(endpoint.url)
    if not daemon_alive(base):
        if endpoint.source in ("argument", "ACE_BRIDGE_URL"):
            # A daemon that was just started (`serve --panel`) can be slow to answer its first request.
            if not daemon_alive(base, timeout=15.0):
                raise PanelError(f"no daemon answers at {endpoint.url}")
        else:
            base = http_base(start_daemon())
    token = endpoint.token or read_token()
    if not token:
        raise PanelError(f"no token: the daemon's token file is missing in {config_dir()}")
    return request_code(base, token)


def open_panel(args: argparse.Namespace) -> int:
    try:
        url = panel_url(args)
    except PanelError as exc:
        print(f"ace-bridge panel: {exc}", file=sys.stderr)
        return 3
    if getattr(args, "browser", False):
        return open_in_browser(url)
    try:
        import webview  # noqa: F401
    except ImportError:
        print(
            "ace-bridge panel: pywebview is not installed, so the panel opens in your web browser instead.\n"
            "  For a separate window: pip install 'pywebview[qt]'",
            file=sys.stderr,
        )
        return open_in_browser(url)
    return open_window(url)


def open_in_browser(url: str) -> int:
    # The link is single use and expires in a minute, so printing it leaks nothing lasting.
    print(f"ace-bridge panel: opening {url.split('?')[0]} in the browser")
    if not webbrowser.open(url):
        print(f"ace-bridge panel: no browser found; open this link within a minute: {url}", file=sys.stderr)
        return 3
    return 0


def open_window(url: str) -> int:
    import webview

    selftest = os.environ.get(SELFTEST_ENV)
    window = webview.create_window("ACE Bridge", url, width=1180, height=860, min_size=(640, 480))
    assert window is not None  # pywebview returns None only when called before its GUI module loaded
    outcome = {"rc": 0}

    def report() -> None:
        # Test hook: wait until the page says it rendered the daemon's state, print what it shows, close.
        # run_js, not evaluate_js: the latter wraps the script in eval(), which the panel's CSP forbids.
        deadline = time.monotonic() + 60
        ready = None
        window.events.loaded.wait(60)
        while time.monotonic() < deadline and not ready:
            ready = window.run_js(
                "document.body && document.body.dataset.ready === '1' && document.getElementById('conn').className"
                " === 'conn live' ? JSON.stringify({badge: document.getElementById('engine-badge').textContent,"
                " conn: document.getElementById('conn').textContent, title: document.title}) : ''"
            )
            if not ready:
                time.sleep(0.1)  # polling the page from pywebview's worker thread
        if ready:
            print(f"PANEL LOADED {ready}", flush=True)
            if selftest and selftest != "1":
                Path(selftest).write_text(str(ready))
        else:
            print("PANEL NOT LOADED", flush=True)
            outcome["rc"] = 4
        window.destroy()

    if selftest:
        webview.start(report)
    else:
        webview.start()
    return outcome["rc"]


def open_panel_for_running(url: str) -> None:
    """`serve --panel`: open the panel of the daemon that just started, in a child process (GUI main thread)."""
    try:
        subprocess.Popen([sys.executable, "-m", "bridge_server.cli", "panel", "--url", url], stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"ace-bridge: cannot open the panel: {exc}", file=sys.stderr)
