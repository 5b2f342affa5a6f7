"""Drive the real GIMP 3 GUI under Xvfb like a user would (run by tests/editors/test_gimp_interactive.py).

Runs inside the trixie environment with its python3: starts Xvfb (display number chosen by Xvfb itself), starts
`gimp-3.0` with gimp_ui_batch.py as its batch code (--quit), then for every run of the config waits until the
batch announces it (`<work>/phase.txt`), finds the plug-in's dialog on screen with xdotool, saves a screenshot,
focuses it and presses Return (OK) or Escape (cancel) through XTEST; for a run whose progress window is to be
cancelled it first pauses the daemon's queue (control panel API, so the job cannot finish before the key arrives),
then finds the progress window and presses Escape. Every wait polls with a deadline. What happened goes to
`<work>/driver.json`; GIMP's output to `<work>/gimp.log`. Processes it started are stopped by their own ids.

Usage: python3 gimp_ui_driver.py CONFIG.json
"""

import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import urllib.request

CONFIG = json.load(open(sys.argv[1]))
WORK = CONFIG["work_dir"]
T0 = time.monotonic()
DEADLINE = T0 + CONFIG["deadline_s"]
REPORT = {"steps": [], "events": [], "error": None}


def note(text):
    REPORT["events"].append(f"{time.monotonic() - T0:6.2f}s {text}")


def write_report():
    with open(os.path.join(WORK, "driver.json"), "w") as fh:
        json.dump(REPORT, fh, indent=1)


def poll(what, check, timeout):
    """Call check() until it returns something truthy; raise with `what` at the deadline."""
    end = min(DEADLINE, time.monotonic() + timeout)
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)  # polling interval, not a wait for an event


def xdotool(*args, timeout=10):
    proc = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout.strip(), proc.stderr.strip()


def visible_windows(title):
    rc, out, _ = xdotool("search", "--onlyvisible", "--name", "^" + re.escape(title) + "$")
    return out.split() if rc == 0 else []


def geometry(wid):
    _, out, _ = xdotool("getwindowgeometry", "--shell", wid)
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])


def screenshot(wid, name):
    """Save the screen and the window's part of it once the window has been painted. Without a window manager
    new windows open at the top left, over GIMP's main window; the window is first moved to the empty part of the
    screen. X moves an unpainted window's stale pixels along, so it counts as painted only once it no longer shows
    what is still at its old place."""
    import gi

    gi.require_version("Gdk", "3.0")
    from gi.repository import Gdk

    root = Gdk.get_default_root_window()
    x0, y0, _, _ = geometry(wid)
    rc, _, err = xdotool("windowmove", "--sync", wid, str(CONFIG["shot_x"]), "10")
    if rc != 0:
        raise RuntimeError(f"xdotool windowmove {wid}: rc {rc} {err}")
    x, y, w, h = geometry(wid)

    def grab():
        crop = Gdk.pixbuf_get_from_window(root, x, y, w, h)
        stale = Gdk.pixbuf_get_from_window(root, x0, y0, w, h)
        pixels = crop.get_pixels() if crop is not None else b""
        painted = pixels and len(set(pixels[::97])) > 8 and (stale is None or stale.get_pixels() != pixels)
        return crop if painted else None

    crop = poll(f"window {wid} painted", grab, 10)
    crop.savev(os.path.join(WORK, name), "png", [], [])
    full = Gdk.pixbuf_get_from_window(root, 0, 0, root.get_width(), root.get_height())
    full.savev(os.path.join(WORK, "screen-" + name), "png", [], [])
    note(f"screenshot {name} {w}x{h}+{x}+{y}")


def press(wid, key):
    """Real key events: give the window the input focus (no window manager here), then XTEST the key."""
    rc, _, err = xdotool("windowfocus", "--sync", wid)
    if rc != 0:
        raise RuntimeError(f"xdotool windowfocus {wid}: rc {rc} {err}")
    poll(f"focus on {wid}", lambda: xdotool("getwindowfocus")[1] == wid, 5)
    rc, _, err = xdotool("key", "--clearmodifiers", key)
    if rc != 0:
        raise RuntimeError(f"xdotool key {key}: rc {rc} {err}")
    note(f"pressed {key} on {wid}")


def new_window(title, known, what, timeout):
    return poll(what, lambda: next((w for w in visible_windows(title) if w not in known), None), timeout)


def gone(title, wid, what, timeout):
    poll(what, lambda: wid not in visible_windows(title), timeout)


_opener = None


def set_queue_paused(paused):
    """The daemon's control panel: a one-time code for the token, the session cookie, then POST pause."""
    global _opener
    base = CONFIG["panel_base"]
    if _opener is None:
        _opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        req = urllib.request.Request(
            base + "/panel/api/code",
            data=b"{}",
            method="POST",
            headers={"Authorization": "Bearer " + CONFIG["token"], "Content-Type": "application/json"},
        )
        code = json.load(_opener.open(req, timeout=10))["code"]
        _opener.open(base + "/panel/?code=" + code, timeout=10).read()
    req = urllib.request.Request(
        base + "/panel/api/pause",
        data=json.dumps({"paused": paused}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    answer = json.load(_opener.open(req, timeout=10))
    if answer.get("paused") is not paused:
        raise RuntimeError(f"pause {paused}: {answer}")
    note(f"queue paused={paused}")


def read_phase():
    try:
        with open(os.path.join(WORK, "phase.txt")) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def drive():
    for step in CONFIG["runs"]:
        name = step["name"]
        title = step.get("title", CONFIG["dialog_title"])
        record = {"name": name}
        REPORT["steps"].append(record)
        poll(f"the batch to start run '{name}'", lambda name=name: read_phase() == name, CONFIG["startup_s"])
        note(f"run {name} started")
        if step["dialog"] == "none":  # no arguments to ask for: its window comes at once
            answer_results(step, record)
            continue
        if step.get("progress") == "cancel":
            set_queue_paused(True)
        dialog = new_window(title, set(), f"the dialog '{title}' of run '{name}'", 20)
        note(f"dialog {dialog} mapped")
        record["dialog"] = True
        if step.get("shot"):
            screenshot(dialog, step["shot"])
        for key in step.get("dialog_keys", []):  # e.g. alt+i (the Images field's mnemonic), ctrl+a, type:3, Tab
            if key.startswith("type:"):
                rc, _, err = xdotool("type", "--delay", "30", key[5:])
                if rc != 0:
                    raise RuntimeError(f"xdotool type: rc {rc} {err}")
                note(f"typed {key[5:]!r}")
            else:
                press(dialog, key)
        # After typing into a field Return would go to whatever has the focus; the OK button's mnemonic does not.
        accept = "alt+o" if step.get("dialog_keys") else "Return"
        press(dialog, accept if step["dialog"] == "ok" else "Escape")
        gone(title, dialog, f"the dialog of run '{name}' to close", 10)
        record["dialog_closed"] = True
        if step.get("progress") == "cancel":
            window = new_window(title, {dialog}, f"the progress window of run '{name}'", 20)
            note(f"progress window {window} mapped")
            record["progress_window"] = True
            if step.get("progress_shot"):
                screenshot(window, step["progress_shot"])
            press(window, "Escape")
            gone(title, window, f"the progress window of run '{name}' to close", 15)
            record["progress_closed"] = True
            set_queue_paused(False)
        elif step["dialog"] == "ok":
            answer_results(step, record)


def answer_results(step, record):
    """The results window after a finished job: thumbnails, the selected one previewed on the canvas. The run's
    `results_keys` (e.g. Down to pick the next, Return to apply, Escape to discard) are pressed one by one."""
    title = step.get("results_title", CONFIG["results_title"])
    window = new_window(title, set(), f"the results window of run '{step['name']}'", 60)
    note(f"results window {window} mapped")
    record["results_window"] = True
    keys = step.get("results_keys", ["Return"])
    for i, key in enumerate(keys):
        if i == len(keys) - 1 and step.get("results_shot"):
            time.sleep(0.5)  # the canvas redraws the preview layer after the selection changed (not an event we see)
            screenshot(window, step["results_shot"])
        press(window, key)
    gone(title, window, f"the results window of run '{step['name']}' to close", 15)
    record["results_closed"] = True


def main():
    xvfb = gimp = None
    try:
        read_fd, write_fd = os.pipe()
        xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset"],
            pass_fds=[write_fd],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(WORK, "xvfb.log"), "w"),
            start_new_session=True,
        )
        os.close(write_fd)
        display = b""
        while not display.endswith(b"\n"):
            chunk = os.read(read_fd, 16)  # Xvfb writes the number once it accepts connections
            if not chunk:
                raise RuntimeError("Xvfb exited before it was ready (see xvfb.log)")
            display += chunk
        os.close(read_fd)
        os.environ["DISPLAY"] = ":" + display.decode().strip()
        note(f"Xvfb ready on {os.environ['DISPLAY']}")
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
        poll("the batch to finish", lambda: read_phase() == "done", 20)
        rc = poll("GIMP to quit", lambda: gimp.poll() is not None and [gimp.returncode], 20)[0]
        note(f"GIMP exited with {rc}")
        REPORT["gimp_rc"] = rc
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
        note("done")
        write_report()


main()
