"""The harness every test-only Krita runner plugin (krita_scripts/ace_*_runner) shares.

Krita loads each runner as its own top-level package from the profile's pykrita folder, so
`krita_runner.install_runner` copies this file into the runner's package and the runner imports it relatively
(`from .runner_harness import start_on_window`).

A runner is a step machine: a generator that yields to let Krita's event loop turn (the UI thread stays responsive,
so the worker's signals arrive), stepped every 50 ms by a QTimer. It records name -> [ok, detail] checks, writes
them to the config's result file and leaves with os._exit (or through File > Quit).

Only the standard library and Krita's own PyQt here: the plugin under test may not be installed yet (the import
story installs it), so Qt is picked as the plugin's qt_compat does, not imported from it.
"""

import importlib
import json
import os
import sys
import time
import traceback

TICK_MS = 50
TICKS_PER_S = 1000 // TICK_MS
START_DELAY_MS = 1500  # after windowCreated: the dockers are built a moment later
QUIT_GRACE_MS = 30000  # File > Quit did not leave by then: leave anyway, do not hang the test
DETAIL_LIMIT = 2000
_alive = []  # what Qt calls back into must outlive the function that connected it


def qt_core():
    """QtCore of the PyQt this Krita runs: PyQt6 in Krita 6, PyQt5 before (5.1 has no qt_major_version())."""
    try:
        import pykrita

        major = int(pykrita.qt_major_version())
    except Exception:
        major = 5
    return importlib.import_module(f"PyQt{major}.QtCore")


class Harness:
    """One run: the config, the checks so far, and the steps' timer."""

    def __init__(self, config_path):
        from krita import Krita

        with open(config_path) as fh:
            self.cfg = json.load(fh)
        self.app = Krita.instance()
        self.checks = {}
        self.out = {}  # what a later phase needs (the painter's "reopen" gets the "paint" phase's)
        self.deadline_s = self.cfg.get("step_timeout_s", 90)
        self.started = time.monotonic()
        self.timer = None

    def check(self, name, ok, detail=""):
        detail = str(detail)[:DETAIL_LIMIT]
        self.checks[name] = [bool(ok), detail]
        # Also on stderr as it happens: a run that times out still shows how far it got.
        took = time.monotonic() - self.started
        print(f"ACE-RUNNER-CHECK {took:.0f}s {name} {'ok' if ok else 'FAILED'} {detail}", file=sys.stderr, flush=True)

    def write(self):
        failed = [k for k, v in self.checks.items() if not v[0]]
        with open(self.cfg["result"], "w") as fh:
            json.dump({"checks": self.checks, "out": self.out, "failed": failed}, fh, indent=1)

    def finish(self, quit_action=False):
        """Write the result and leave: at once, or through File > Quit (Krita then writes its settings)."""
        for d in self.app.documents():
            d.setModified(False)
        self.write()
        if quit_action:
            qt_core().QTimer.singleShot(QUIT_GRACE_MS, lambda: os._exit(0))
            self.app.action("file_quit").trigger()
        else:
            os._exit(0)

    def ticks(self, n):
        """Let the event loop turn `n` times."""
        for _ in range(n):
            yield

    def wait(self, condition, seconds=None):
        """Until condition() holds, at most `seconds` (the config's step_timeout_s when not given)."""
        for _ in range(int((seconds or self.deadline_s) * TICKS_PER_S)):
            if condition():
                return
            yield

    def undo_once(self, doc, patience_ticks=100):
        """One Edit > Undo, then wait (up to 5 s) until the layer stack or the canvas size changed: on a busy
        machine Krita applies an undo later than a few event-loop turns."""

        def shape():
            return [n.uniqueId().toString() for n in doc.rootNode().childNodes()], doc.width(), doc.height()

        # Krita drops an undo that comes while the image is still busy with the last change (seen once in CI on
        # 5.2.9: a result group just added, refreshProjection still running, and the undo did nothing).
        doc.waitForDone()
        yield
        before = shape()
        self.app.action("edit_undo").trigger()
        doc.waitForDone()
        for _ in range(patience_ticks):
            yield
            if shape() != before:
                break
        yield from self.ticks(2)  # and let the views settle

    def play(self, steps):
        """Step the generator `steps` on a QTimer; finish() when it ends, with an "exception" check if it raises."""
        timer = self.timer = qt_core().QTimer()

        def tick():
            try:
                next(steps)
            except StopIteration:
                timer.stop()
                self.finish()
            except Exception:
                self.check("exception", False, traceback.format_exc())
                timer.stop()
                self.finish()

        timer.timeout.connect(tick)
        timer.start(TICK_MS)
        _alive.append(self)


def start_on_window(env_name, run):
    """When env `env_name` names a config file: once Krita's window is there, call run(Harness(config)).

    `run` plays its steps (Harness.play) or finishes by itself; an exception in it is an "exception" check."""
    config_path = os.environ.get(env_name)
    if not config_path:
        return
    from krita import Krita

    def safe_run():
        harness = Harness(config_path)
        try:
            run(harness)
        except Exception:
            harness.check("exception", False, traceback.format_exc())
            harness.finish()

    def on_window():
        qt_core().QTimer.singleShot(START_DELAY_MS, safe_run)

    notifier = Krita.instance().notifier()
    notifier.setActive(True)
    notifier.windowCreated.connect(on_window)
    _alive.append((notifier, on_window, safe_run))
