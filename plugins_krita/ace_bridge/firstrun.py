"""The docker's first-run box: "Start ACE Bridge" when no daemon answers, the model's status with a "Download"
button and a progress bar, a plain "no usable GPU" note. Qt glue only: what to run and what it means is
ace_editor.daemon's; slow calls run on Python threads and come back through Qt signals.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .bundled import client as protocol_client
from .bundled import daemon
from .qt_compat import QObject, QTimer, QtWidgets, Signal

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
POLL_MS = 500


class FirstRun(QObject):
    """State and threads of the box; `panel` shows it."""

    start_finished = Signal(object)  # daemon.StartResult
    model_state = Signal(object)  # dict (a model_state message), or {"error": text}

    def __init__(self, worker: Any, url_of: Any) -> None:
        super().__init__()
        self.worker = worker
        self.url_of = url_of  # callable -> the URL the docker connects to ("" = discovery)
        self.starting = False
        self.last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._timer = QTimer(self)
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.refresh)

    def url(self) -> str:
        return daemon.endpoint_url(self.url_of())

    # ------------------------------------------------------------------ starting the daemon
    def start(self) -> None:
        if self.starting:
            return
        self.starting = True
        url, log_path = self.url(), daemon.default_log_path()

        def run() -> None:
            try:
                result = daemon.start_and_wait(url, PLUGIN_DIR, log_path, should_stop=self._stop.is_set)
            except Exception as exc:  # never lose the button's answer
                result = daemon.StartResult(False, f"{type(exc).__name__}: {exc}", daemon.log_tail(log_path))
            self.start_finished.emit(result)

        threading.Thread(target=run, name="ace-bridge-start", daemon=True).start()

    # ------------------------------------------------------------------ model status and download
    def refresh(self) -> None:
        """Ask the daemon for its model state (off the UI thread)."""
        self._call(lambda c: c.model_status())

    def download(self) -> None:
        self._call(lambda c: c.pull_model(confirm=True))

    def cancel_download(self) -> None:
        self._call(lambda c: c.cancel_pull())

    def _call(self, fn: Any) -> None:
        client = self.worker.client
        if client is None:
            return

        def run() -> None:
            try:
                reply = fn(client).to_wire()
            except (protocol_client.ClientError, TimeoutError, OSError) as exc:
                reply = {"error": str(exc)}
            self.model_state.emit(reply)

        threading.Thread(target=run, name="ace-bridge-model", daemon=True).start()

    def follow(self, state: dict[str, Any]) -> None:
        """Poll while a download runs or the model loads; stop when it ends."""
        running = daemon.keep_polling(state)  # a download, or the model loading
        if running and not self._timer.isActive():
            self._timer.start()
        elif not running and self._timer.isActive():
            self._timer.stop()

    def stop(self) -> None:
        self._stop.set()
        self._timer.stop()


class FirstRunPanel(QtWidgets.QGroupBox):
    """The box in the docker. Hidden once a daemon answers with an installed model on a usable GPU."""

    model_ready = Signal()  # a download finished: reconnect for the new task table

    def __init__(self, first_run: FirstRun, parent: Any = None) -> None:
        super().__init__("ACE Bridge", parent)
        W = QtWidgets
        self.first_run = first_run
        layout = W.QVBoxLayout(self)
        self.message = W.QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self.start_button = W.QPushButton("Start ACE Bridge")
        self.start_button.setToolTip("Runs `ace-bridge serve` on this computer, in the background")
        self.start_button.clicked.connect(self._on_start)
        layout.addWidget(self.start_button)
        self.log = W.QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumHeight(120)
        self.log.hide()
        layout.addWidget(self.log)
        self.model_text = W.QLabel("")
        self.model_text.setWordWrap(True)
        layout.addWidget(self.model_text)
        self.warning = W.QLabel("")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #c0392b")
        layout.addWidget(self.warning)
        self.progress = W.QProgressBar()
        self.progress.hide()
        layout.addWidget(self.progress)
        row = W.QHBoxLayout()
        self.download_button = W.QPushButton("Download")
        self.download_button.setToolTip("Accept the licence shown above and download the model (resumable)")
        self.download_button.clicked.connect(self._on_download)
        self.cancel_button = W.QPushButton("Cancel download")
        self.cancel_button.clicked.connect(first_run.cancel_download)
        row.addWidget(self.download_button, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        self.download_button.hide()
        self.cancel_button.hide()
        first_run.start_finished.connect(self._on_started)
        first_run.model_state.connect(self._on_model_state)
        self.advice: Any = None
        self.hide()

    # ------------------------------------------------------------------ connection
    def on_connection(self, state: str, message: str) -> None:
        if state == "connected":
            self.start_button.hide()
            self.message.setText("")
            self.first_run.refresh()
            return
        if state == "disconnected" and not self.first_run.starting:
            url = self.first_run.url()
            if daemon.is_remote(url):
                self.start_button.hide()
                self.message.setText(f"ACE Bridge at {url} does not answer. Start it on that machine.")
            else:
                self.start_button.show()
                self.start_button.setEnabled(True)
                self.message.setText("ACE Bridge is not running on this computer.")
            self.show()

    def _on_start(self) -> None:
        self.start_button.setEnabled(False)
        self.log.hide()
        self.message.setText("Starting ACE Bridge… (the first start takes a while)")
        self.first_run.start()

    def _on_started(self, result: Any) -> None:
        self.first_run.starting = False
        if result.ok:
            connected = self.first_run.worker.state == "connected"
            self.message.setText("" if connected else result.message + " Connecting…")
            self.start_button.hide()
            return
        self.start_button.setEnabled(True)
        self.message.setText(result.message)
        if result.log:
            self.log.setPlainText(result.log)
            self.log.show()

    # ------------------------------------------------------------------ model
    def _on_download(self) -> None:
        self.download_button.setEnabled(False)
        self.first_run.download()

    def _on_model_state(self, state: dict) -> None:
        if "error" in state:
            self.model_text.setText(f"Could not read the model status: {state['error']}")
            self.download_button.setEnabled(True)
            self.show()
            return
        previous = self.first_run.last
        self.first_run.last = state
        self.first_run.follow(state)
        advice = self.advice = daemon.advice(state)
        self.warning.setText(advice.warning if advice.state != "no_gpu" else advice.detail)
        self.warning.setVisible(bool(self.warning.text()))
        self.model_text.setText(
            f"<b>{advice.title}</b><br>{advice.detail}".replace("\n", "<br>")
            if advice.state not in ("ready", "no_gpu")
            else advice.title
        )
        self.download_button.setVisible(advice.can_download)
        self.download_button.setEnabled(advice.can_download)
        self.cancel_button.setVisible(advice.can_cancel)
        self.progress.setVisible(advice.busy)
        if advice.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(advice.fraction * 1000))
        was_running = previous is not None and (previous.get("pull") or {}).get("state") == "running"
        if advice.state == "ready":
            self.hide()
        else:
            self.show()
        if was_running and (state.get("pull") or {}).get("state") == "done":
            self.model_ready.emit()
