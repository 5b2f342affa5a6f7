"""Drive the GIMP plug-in's first run in the real GIMP 3 GUI under Xvfb (tests/editors/test_gimp_first_run.py).

Starts Xvfb and GIMP with gimp_first_run_batch.py (one interactive Inpaint, no daemon running), then, like a
user, with real key events (xdotool, XTEST): waits for the window "ACE Bridge — not running", presses
Alt+S (Start ACE Bridge), waits for "ACE Bridge — model missing" (the daemon started and answers, no model),
Alt+D (Download), sees "ACE Bridge — downloading", waits for "ACE Bridge — ready", Alt+O (Continue); then the
ACE++ dialog opens (no URL/token fields for a local daemon) and Return runs the job. Screenshots of each window
go to the work folder. Processes it started are stopped by their own ids. Usage: python3 THIS CONFIG.json
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

CONFIG = json.load(open(sys.argv[1]))
WORK = CONFIG["work_dir"]
T0 = time.monotonic()
DEADLINE = T0 + CONFIG["deadline_s"]
REPORT = {"steps": [], "error": None}


def note(text):
    REPORT["steps"].append(f"{time.monotonic() - T0:6.2f}s {text}")


def poll(what, check, timeout):
    end = min(DEADLINE, time.monotonic() + timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)  # polling interval, not a wait for an event


def xdotool(*args):
    proc = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=10, check=False)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def window(title):
    rc, out, _ = xdotool("search", "--onlyvisible", "--name", "^" + re.escape(title) + "$")
    return out.split()[0] if rc == 0 and out else None


def screenshot(wid, name):
    import gi

    gi.require_version("Gdk", "3.0")
    from gi.repository import Gdk

    xdotool("windowmove", "--sync", wid, "700", "10")
    time.sleep(0.5)  # let the moved window repaint before the grab
    _, out, _ = xdotool("getwindowgeometry", "--shell", wid)
    geo = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    root = Gdk.get_default_root_window()
    crop = Gdk.pixbuf_get_from_window(root, int(geo["X"]), int(geo["Y"]), int(geo["WIDTH"]), int(geo["HEIGHT"]))
    crop.savev(os.path.join(WORK, name), "png", [], [])
    note(f"screenshot {name}")


def press(wid, key):
    xdotool("windowfocus", "--sync", wid)
    poll(f"focus on {wid}", lambda: xdotool("getwindowfocus")[1] == wid, 5)
    rc, _, err = xdotool("key", "--clearmodifiers", key)
    if rc != 0:
        raise RuntimeError(f"xdotool key {key}: {err}")
    note(f"pressed {key}")


def phase():
    try:
        with open(os.path.join(WORK, "phase.txt")) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def drive():
    poll("the batch to start", lambda: phase() == "run", CONFIG["startup_s"])
    wid = poll("'ACE Bridge — not running'", lambda: window("ACE Bridge — not running"), 60)
    note("setup window: not running")
    screenshot(wid, "gimp-not-running.png")
    press(wid, "alt+s")
    wid = poll("'ACE Bridge — model missing'", lambda: window("ACE Bridge — model missing"), CONFIG["start_s"])
    note("setup window: model missing")
    time.sleep(1.0)  # let the model text and the warning lay out before the screenshot
    screenshot(wid, "gimp-first-run.png")
    press(wid, "alt+d")
    wid = poll("'ACE Bridge — downloading'", lambda: window("ACE Bridge — downloading"), 60)
    note("setup window: downloading")
    time.sleep(1.5)  # some progress on the bar for the screenshot
    screenshot(wid, "gimp-download.png")
    wid = poll("'ACE Bridge — ready'", lambda: window("ACE Bridge — ready"), 120)
    note("setup window: ready")
    press(wid, "alt+o")
    title = CONFIG["dialog_title"]
    dialog = poll(f"the dialog '{title}'", lambda: window(title), 60)
    note("ACE++ dialog")
    time.sleep(1.0)
    screenshot(dialog, "gimp-dialog.png")
    press(dialog, "Return")
    # The finished job waits in the results window, previewed on the canvas: Return applies it.
    results = poll("the results window", lambda: window(CONFIG["results_title"]), 120)
    note("results window")
    press(results, "Return")
    poll("the batch to finish", lambda: phase() == "done", 120)


def main():
    xvfb = gimp = None
    try:
        read_fd, write_fd = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1400x900x24", "-nolisten", "tcp", "-noreset"],
            pass_fds=[write_fd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(write_fd)
        display = b""
        while not display.endswith(b"\n"):
            chunk = os.read(read_fd, 16)
            if not chunk:
                raise RuntimeError("Xvfb exited before it was ready")
            display += chunk
        os.close(read_fd)
        os.environ["DISPLAY"] = ":" + display.decode().strip()
        batch = f"__file__ = {CONFIG['batch']!r}; exec(compile(open(__file__).read(), __file__, 'exec'))"
        gimp = subprocess.Popen(
            [
                CONFIG["gimp"],
                "--no-splash",
                "--no-data",
                "--no-fonts",
                "--batch-interpreter=python-fu-eval",
                "-b",
                batch,
                "--quit",
            ],
            stdout=open(os.path.join(WORK, "gimp.log"), "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        drive()
        REPORT["gimp_rc"] = poll("GIMP to quit", lambda: gimp.poll() is not None and [gimp.returncode], 30)[0]
    except Exception:
        REPORT["error"] = traceback.format_exc()
    finally:
        for proc in (gimp, xvfb):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        with open(os.path.join(WORK, "driver.json"), "w") as fh:
            json.dump(REPORT, fh, indent=1)


main()
