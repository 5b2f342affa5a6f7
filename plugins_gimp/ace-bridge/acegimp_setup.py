"""The first-run window of the GIMP plug-in (GTK glue only; the logic is ace_editor.daemon's).

Shown before an interactive ACE++ dialog when no daemon answers on this computer, or when the daemon has no
usable model: "Start ACE Bridge" runs the recorded `ace-bridge serve` detached and waits for its health route
(the log's last lines on failure); the model box says what is missing, its size and licence, with "Download"
(the daemon's own download, a progress bar, cancellable and resumable), and says plainly when there is no usable
GPU (pointing to the demo model). The window title names the state ("ACE Bridge — model missing"), which is what
the editor test watches. Every GIMP/GTK call stays on the plug-in's main thread; a helper thread talks to the
daemon and leaves its findings in `self.shared`.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import gi

gi.require_version("Gtk", "3.0")
from acegimp_bundled import client as protocol_client  # noqa: E402
from acegimp_bundled import daemon  # noqa: E402
from gi.repository import GLib, Gtk  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
TITLES = {
    "not_running": "not running",
    "starting": "starting",
    "failed_start": "could not start",
    "connecting": "connecting",
    "missing": "model missing",
    "failed": "model missing",
    "downloading": "downloading",
    "no_gpu": "no usable GPU",
    "ready": "ready",
}


def needs_setup(url: str, client_factory: Any) -> bool:
    """Whether to show the window first: a local daemon that does not answer, or one without a usable model."""
    if daemon.is_remote(url):
        return False  # a remote daemon is started where it runs; its errors come from the job as before
    if daemon.check_health(url) is None:
        return True
    try:
        client = client_factory()
        try:
            client.connect()
            state = client.model_status().to_wire()
        finally:
            client.close()
    except (protocol_client.ClientError, TimeoutError, OSError):
        return False  # an older daemon without model_status, or a refused token: the job says what is wrong
    return daemon.advice(state).state != "ready"


def _text_line(box: Any) -> Any:
    """A left-aligned label that wraps at 70 characters, packed into `box` (the window's texts)."""
    label = Gtk.Label(label="", xalign=0.0)
    label.set_line_wrap(True)
    label.set_max_width_chars(70)
    box.pack_start(label, False, False, 0)
    return label


class SetupWindow:
    def __init__(self, url: str, client_factory: Any) -> None:
        self.url = url
        self.client_factory = client_factory
        self.shared: dict[str, Any] = {"phase": "checking", "state": None, "start": None, "error": ""}
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.stop = threading.Event()
        self.response: int | None = None
        self.wants_remote = False
        self._build()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        win = Gtk.Dialog(title="ACE Bridge")
        win.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.continue_button = win.add_button("C_ontinue", Gtk.ResponseType.OK)
        self.continue_button.set_sensitive(False)
        box = win.get_content_area()
        box.set_spacing(6)
        box.set_border_width(10)
        self.message = _text_line(box)
        self.start_button = Gtk.Button.new_with_mnemonic("_Start ACE Bridge")
        self.start_button.connect("clicked", lambda *_: self._request("start"))
        box.pack_start(self.start_button, False, False, 0)
        self.log_view = Gtk.TextView(editable=False, monospace=True)
        self.log_scroll = Gtk.ScrolledWindow()
        self.log_scroll.set_min_content_height(120)
        self.log_scroll.add(self.log_view)
        box.pack_start(self.log_scroll, True, True, 0)
        self.model = _text_line(box)
        self.warning = _text_line(box)
        self.bar = Gtk.ProgressBar(show_text=True)
        box.pack_start(self.bar, False, False, 0)
        row = Gtk.Box(spacing=6)
        self.download_button = Gtk.Button.new_with_mnemonic("_Download")
        self.download_button.set_tooltip_text("Accept the licence above and download the model (resumable)")
        self.download_button.connect("clicked", lambda *_: self._request("download"))
        self.cancel_download = Gtk.Button.new_with_mnemonic("Stop do_wnload")
        self.cancel_download.connect("clicked", lambda *_: self._request("cancel"))
        row.pack_start(self.download_button, True, True, 0)
        row.pack_start(self.cancel_download, False, False, 0)
        box.pack_start(row, False, False, 0)
        self.remote = Gtk.CheckButton.new_with_mnemonic(
            "Use a daemon on another _computer (enter its URL and token in the next dialog)"
        )
        self.remote.connect("toggled", lambda *_: self._show())
        box.pack_start(self.remote, False, False, 0)
        win.connect("response", self._on_response)
        win.connect("delete-event", lambda *_: self._on_response(win, Gtk.ResponseType.CANCEL) or True)
        win.set_default_size(520, -1)
        win.show_all()
        for widget in (
            self.start_button,
            self.log_scroll,
            self.download_button,
            self.cancel_download,
            self.bar,
            self.warning,
        ):
            widget.hide()
        self.window = win

    def _on_response(self, _win: Any, response: int) -> None:
        self.response = int(response)

    def _request(self, what: str) -> None:
        with self.lock:
            self.requests.append(what)
        if what == "start":
            self.start_button.set_sensitive(False)
        elif what == "download":
            self.download_button.set_sensitive(False)

    # ------------------------------------------------------------------ the helper thread
    def _worker(self) -> None:
        log_path = daemon.default_log_path()
        client = None
        try:
            while not self.stop.is_set():
                if daemon.check_health(self.url) is not None:
                    break
                self._set(phase="not_running")
                if self._take("start"):
                    self._set(phase="starting")
                    result = daemon.start_and_wait(self.url, PLUGIN_DIR, log_path, should_stop=self.stop.is_set)
                    self._set(start=result, phase="connecting" if result.ok else "failed_start")
                    if result.ok:
                        break
                self.stop.wait(0.3)
            self._set(phase="connecting")
            while not self.stop.is_set() and client is None:
                try:
                    client = self.client_factory()
                    client.connect()
                except (protocol_client.ClientError, OSError) as exc:
                    client = None
                    self._set(error=str(exc))
                    self.stop.wait(1.0)
            while not self.stop.is_set() and client is not None:
                try:
                    if self._take("download"):
                        state = client.pull_model(confirm=True)
                    elif self._take("cancel"):
                        state = client.cancel_pull()
                    else:
                        state = client.model_status()
                    self._set(state=state.to_wire(), phase="model", error="")
                except (protocol_client.ClientError, TimeoutError, OSError) as exc:
                    self._set(error=str(exc))
                self.stop.wait(0.5)
        finally:
            if client is not None:
                client.close()

    def _take(self, what: str) -> bool:
        with self.lock:
            if what in self.requests:
                self.requests.remove(what)
                return True
        return False

    def _set(self, **values: Any) -> None:
        with self.lock:
            self.shared.update(values)

    # ------------------------------------------------------------------ main thread
    def _show(self) -> None:
        with self.lock:
            shared = dict(self.shared)
        phase, state, start = shared["phase"], shared["state"], shared["start"]
        key = phase
        if phase in ("not_running", "failed_start"):
            text = "ACE Bridge is not running on this computer." if phase == "not_running" else start.message
            self.start_button.show()
            self.start_button.set_sensitive(phase == "failed_start" or "start" not in self.requests)
            if phase == "failed_start" and start.log:
                self.log_view.get_buffer().set_text(start.log)
                self.log_scroll.show()
            self.message.set_text(text)
        elif phase == "starting":
            self.message.set_text("Starting ACE Bridge… (the first start takes a while)")
        elif phase == "connecting":
            self.start_button.hide()
            self.message.set_text("Connecting to ACE Bridge…" + (f" ({shared['error']})" if shared["error"] else ""))
        elif phase == "model" and state is not None:
            self.start_button.hide()
            self.log_scroll.hide()
            advice = daemon.advice(state)
            key = advice.state
            self.message.set_text("ACE Bridge is running.")
            self.model.set_markup(
                f"<b>{GLib.markup_escape_text(advice.title)}</b>\n"
                + GLib.markup_escape_text(advice.detail if advice.state != "no_gpu" else "")
            )
            warning = advice.warning or (advice.detail if advice.state == "no_gpu" else "")
            self.warning.set_markup(f"<span foreground='#c0392b'>{GLib.markup_escape_text(warning)}</span>")
            self.warning.set_visible(bool(warning))
            self.download_button.set_visible(advice.can_download)
            if advice.can_download and "download" not in self.requests:
                self.download_button.set_sensitive(True)
            self.cancel_download.set_visible(advice.can_cancel)
            self.bar.set_visible(advice.busy)  # a download, or the model going into memory
            if advice.fraction is None:
                self.bar.pulse()
                self.bar.set_text(advice.detail)
            else:
                self.bar.set_fraction(advice.fraction)
                self.bar.set_text(f"{advice.fraction * 100:.0f} %  {advice.detail}")
            self.continue_button.set_sensitive(advice.state in ("ready", "no_gpu", "loading"))
        if self.remote.get_active():
            self.continue_button.set_sensitive(True)
        title = f"ACE Bridge — {TITLES.get(key, key)}"
        if self.window.get_title() != title:
            self.window.set_title(title)

    def run(self) -> bool:
        """Until Continue (True) or Cancel / closing the window (False). `wants_remote` tells the caller to show
        the URL and token fields."""
        thread = threading.Thread(target=self._worker, name="ace-bridge-setup", daemon=True)
        thread.start()
        context = GLib.MainContext.default()
        try:
            while self.response is None:
                while context.pending():
                    context.iteration(False)
                self._show()
                time.sleep(0.05)  # the UI's own tick while the helper thread works
        finally:
            self.stop.set()
            self.window.destroy()
            while context.pending():
                context.iteration(False)
            thread.join(5)
        self.wants_remote = self.remote.get_active()
        return self.response == int(Gtk.ResponseType.OK)


def run_setup(url: str, client_factory: Any) -> tuple[bool, bool]:
    """Show the window if needed. Returns (go on to the ACE++ dialog, show its URL and token fields)."""
    if not needs_setup(url, client_factory):
        return True, daemon.is_remote(url)
    window = SetupWindow(url, client_factory)
    go_on = window.run()
    return go_on, daemon.is_remote(url) or window.wants_remote
