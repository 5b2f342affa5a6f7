"""The headline: ONE local daemon that every open editor shares.

One real `ace-bridge serve --demo --paused` daemon; a Krita (kritarunner, headless) and a GIMP 3 (gimp-console) run
at the same time as parallel subprocesses under `timeout -k`, each submitting two jobs (64x48, 2 steps) through its
own plug-in code path. Run once per Krita install, each with the GIMP of its generation (`editor_pairs`): Krita 5.1
and 5.2 with GIMP 3.0, Krita 5.3 and 6.0 with GIMP 3.2, so every Krita and every GIMP shares a daemon once:

- Krita: the docker's `Controller.generate` twice (BridgeWorker sends each job on its own thread, so both wait in
  the paused queue together); results are inserted by the controller into the document they came from;
- GIMP: the installed `python-fu-ace-bridge-inpaint` procedure through the PDB, twice. A GIMP action blocks until
  its result is in, so GIMP has one job in the queue at a time; its first one is sent once Krita's two are queued.

While the queue is paused the test reads the control panel's state until it shows both editors connected with
three queued jobs (Krita's two, GIMP's first), then resumes the queue through the panel API. The daemon's turn
order (round-robin by client id) must then serve Krita, GIMP, Krita, GIMP: Krita's second job is already waiting
when GIMP's first ends, and GIMP's second can only arrive after that. Asserted: each editor holds exactly its own
two results as new layers in its own document; the history holds four entries whose provenance names both
editors, finished in that alternating order; the journal started the jobs in the same order.
"""

from __future__ import annotations

import concurrent.futures
import http.cookiejar
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import chroot  # noqa: E402
import gimp_runner  # noqa: E402
import krita_runner  # noqa: E402
import prerequisites  # noqa: E402

pytestmark = pytest.mark.editors

JOBS = 2
#: The panel's "Default steps" for this run: the editors send no steps, so every job must run with this many.
PANEL_STEPS = 3
EDITOR_TIMEOUT_S = 50
#: Krita's own start (a fresh profile builds its resource database first; Krita 6 loads QML too) comes before the
#: script's deadline starts: the process gets this much more before it is killed, so the script's deadline decides.
KRITA_START_S = 30
PROCEDURE = "python-fu-ace-bridge-inpaint"


def _gimp_for(krita: krita_runner.KritaInstall, gimps: list[gimp_runner.GimpInstall]):
    """The GIMP of the Krita's generation: the one in its own environment, sid's for sid and sid-experimental,
    trixie's for the others; the newest one found when that one is missing."""
    wanted = (
        krita.where
        if krita.where in gimp_runner.GIMP_ENVIRONMENTS
        else ("sid" if krita.where.startswith("sid") else "trixie")
    )
    same = [g for g in gimps if g.where == wanted]
    return same[0] if same else gimps[-1]


def editor_pairs() -> list:
    """(Krita, GIMP) parameters: every Krita install with the GIMP of its generation."""
    gimps = gimp_runner.gimp_installs()
    pairs = []
    for param in krita_runner.install_params():
        krita = param.values[0]
        if isinstance(krita, krita_runner.KritaInstall) and gimps:
            gimp = _gimp_for(krita, gimps)
            pairs.append(pytest.param(krita, gimp, id=f"{krita.name}+{gimp.name}"))
        else:
            pairs.append(pytest.param(krita, None, id=param.id, marks=param.marks))
    return pairs


def _require_editors(krita, gimp) -> tuple[krita_runner.KritaInstall, gimp_runner.GimpInstall]:
    if not isinstance(gimp, gimp_runner.GimpInstall):
        prerequisites.missing(
            f"the shared-daemon test needs GIMP 3 (host '{chroot.host_codename()}'): run "
            ".ci/steps/20_trixie_chroot.sh and 21_sid_chroot.sh as root"
        )
    return krita_runner.require(krita), gimp


class Panel:
    """The daemon's control panel API, as `ace-bridge panel` opens it: token -> one-time code -> session cookie."""

    def __init__(self, port: int, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        req = urllib.request.Request(
            self.base + "/panel/api/code",
            data=b"{}",
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        code = json.load(self.opener.open(req, timeout=10))["code"]
        self.opener.open(f"{self.base}/panel/?code={code}", timeout=10).read()

    def get(self, path: str) -> dict:
        return json.load(self.opener.open(self.base + path, timeout=10))

    def settings(self, **values) -> dict:
        req = urllib.request.Request(
            self.base + "/panel/api/settings",
            data=json.dumps(values).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.load(self.opener.open(req, timeout=10))

    def pause(self, paused: bool) -> dict:
        req = urllib.request.Request(
            self.base + "/panel/api/pause",
            data=json.dumps({"paused": paused}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return json.load(self.opener.open(req, timeout=10))


def _poll(what: str, fn, deadline: float, *failed):
    """fn() until truthy; an editor future that ended early (it failed) stops the wait with its output."""
    while True:
        value = fn()
        if value:
            return value
        for fut in failed:
            if fut.done():
                raise AssertionError(f"an editor ended while waiting for {what}: {fut.result()!r}"[:6000])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {fn()!r}"[:4000])
        time.sleep(0.05)  # polling the panel's state endpoint


def _journal(data_dir: Path) -> list[dict]:
    path = data_dir / "journal.jsonl"
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("krita", "gimp"), editor_pairs())
def test_krita_and_gimp_share_one_daemon(krita, gimp, tmp_path: Path, tiny_model_root: Path) -> None:
    install, gimp = _require_editors(krita, gimp)
    from acegimp_logic import STATE_FILE, ProfileState
    from daemon_fixture import start_process_daemon

    from bridge_server.install.gimp import install_gimp

    t0 = time.monotonic()
    # Krita's profile and plug-in, and the GIMP profile with the installed plug-in.
    krita_home = tmp_path / "krita"
    pykrita = krita_runner.install_plugin(krita_home)
    krita_client = f"krita-shared-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "gimp"
    profile = work / "profile"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache/wheels"))
        plugin_dir = install_gimp(profile)
    gimp_client = ProfileState(profile / STATE_FILE).client_id

    daemon = start_process_daemon(tmp_path / "home", "--paused", tiny_root=tiny_model_root)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        panel = Panel(daemon.port, daemon.token)
        assert panel.get("/panel/api/state")["engine"]["paused"] is True
        panel.settings(default_steps=PANEL_STEPS)

        krita_config = {
            "paths": [install.path(pykrita), install.path(pykrita / "ace_bridge" / "_vendor")],
            "url": daemon.url,
            "token": daemon.token,
            "client_id": krita_client,
            "task": "inpaint",
            "jobs": JOBS,
            "deadline_s": EDITOR_TIMEOUT_S - 5,
        }
        go_file = work / "go"
        gimp_config = {
            "url": daemon.url,
            "token": daemon.token,
            "procedure": PROCEDURE,
            "jobs": JOBS,
            "go_file": str(go_file),
            "out": str(work / "shared.json"),
            "deadline_s": EDITOR_TIMEOUT_S - 5,
            "plugin_dir": str(plugin_dir),
        }
        (work / "config.json").write_text(json.dumps(gimp_config))
        krita_fut = pool.submit(
            krita_runner.run_script,
            install,
            krita_home,
            "krita_shared_daemon",
            krita_config,
            EDITOR_TIMEOUT_S + KRITA_START_S,
        )
        gimp_fut = pool.submit(
            gimp_runner.run_gimp_batch,
            HERE / "gimp_scripts" / "gimp_shared_daemon.py",
            profile,
            EDITOR_TIMEOUT_S,
            env={"ACE_GIMP_SHARED_CONFIG": str(work / "config.json")},
            binds=[work],
            install=gimp,
        )
        deadline = time.monotonic() + EDITOR_TIMEOUT_S

        def queued_by(state: dict) -> list[str]:
            return [row["client_id"] for row in state["queue"] if row["state"] == "queued"]

        # Krita's two jobs wait in the paused queue; then GIMP may send its first.
        _poll(
            "Krita's two queued jobs",
            lambda: queued_by(panel.get("/panel/api/state")).count(krita_client) == JOBS,
            deadline,
            krita_fut,
            gimp_fut,
        )
        go_file.write_text("go")

        def both_waiting():
            state = panel.get("/panel/api/state")
            connected = {c["client_id"]: c for c in state["clients"] if c.get("connected")}
            ready = queued_by(state) == [krita_client, gimp_client, krita_client] and {
                krita_client,
                gimp_client,
            } <= set(connected)
            return state if ready else None

        snapshot = _poll("both editors connected with three queued jobs", both_waiting, deadline, krita_fut, gimp_fut)
        editors = {c["client_id"]: c["editor"] for c in snapshot["clients"]}
        assert editors[krita_client].startswith(f"krita {install.series}"), editors
        assert editors[gimp_client].startswith(f"gimp {gimp.series}"), editors
        assert journal_started(daemon.data_dir) == [], "a job started while the queue was paused"
        assert panel.pause(False)["paused"] is False

        krita = krita_fut.result(EDITOR_TIMEOUT_S + KRITA_START_S + 30)
        gimp_rc, gimp_output = gimp_fut.result(EDITOR_TIMEOUT_S + 30)
        history = panel.get("/panel/api/history?limit=20")
    finally:
        daemon.stop()  # first, so an editor still waiting on it (a failed run) ends at once
        pool.shutdown(wait=True, cancel_futures=True)
    elapsed = time.monotonic() - t0

    # Each editor: its own two results, as layers in its own document.
    assert krita["error"] is None and krita["rc"] == 0, f"{krita.get('error')}\n{krita['output'][-3000:]}"
    gimp_out = json.loads((work / "shared.json").read_text()) if (work / "shared.json").is_file() else {}
    assert gimp_rc == 0 and gimp_out and gimp_out["error"] is None, f"{gimp_out.get('error')}\n{gimp_output[-3000:]}"
    assert [r["status"] for r in gimp_out["runs"]] == ["success"] * JOBS, gimp_out["runs"]

    journal = _journal(daemon.data_dir)
    owner = {e["job_id"]: e["job"]["client_id"] for e in journal if e.get("ev") == "accepted"}
    krita_jobs = {j for j, c in owner.items() if c == krita_client}
    gimp_jobs = {j for j, c in owner.items() if c == gimp_client}
    assert len(krita_jobs) == JOBS and len(gimp_jobs) == JOBS and len(owner) == 2 * JOBS, owner

    assert sorted(krita["finished"].values()) == ["done"] * JOBS, krita["records"]
    k_layers = krita["new_layers"]
    assert len(k_layers) == JOBS and {layer["job_id"] for layer in k_layers} == krita_jobs, (k_layers, owner)
    assert all(layer["editor"].startswith("krita") for layer in k_layers), k_layers
    g_new = [layer for layer in gimp_out["layers"] if layer["name"] != "bg"]
    assert len(g_new) == JOBS and {layer["job_id"] for layer in g_new} == gimp_jobs, (gimp_out["layers"], owner)
    assert all(layer["provenance"] and layer["editor"].startswith("gimp") for layer in g_new), g_new
    # Neither plug-in sent steps: the panel's default steps ran every job (it was their own 28 before).
    assert [layer["steps"] for layer in k_layers + g_new] == [PANEL_STEPS] * (2 * JOBS), (k_layers, g_new)

    # The daemon's history: four entries naming both editors, finished Krita, GIMP, Krita, GIMP.
    entries = sorted(history["entries"], key=lambda e: e["finished"])
    assert history["total"] == 2 * JOBS and len(entries) == 2 * JOBS, history
    order = [e["editor"].split()[0] for e in entries]
    assert order == ["krita", "gimp", "krita", "gimp"], [(e["editor"], e["finished"]) for e in entries]
    started = journal_started(daemon.data_dir)
    assert [owner[j] for j in started] == [krita_client, gimp_client, krita_client, gimp_client], started
    assert elapsed < 60, f"took {elapsed:.1f} s"


def journal_started(data_dir: Path) -> list[str]:
    return [e["job_id"] for e in _journal(data_dir) if e.get("ev") == "started"]
