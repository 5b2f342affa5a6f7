"""The GIMP 3 plug-in inside real GIMP 3.0 and 3.2 (gimp-console-3.x: trixie and sid chroots on bookworm) against a
real daemon.

One GIMP run per GIMP install and module (`gimp_scripts/gimp_checks.py`) calls every ACE++ procedure non-interactively through the
PDB against `ace-bridge serve --demo` (tiny model, 2 steps, 96x64 images) and records named checks; the tests
below assert on them. Stories (issue 5): each offered task gives one new layer at the region's offset, pixels
outside the selection and the source layers unchanged, provenance parasite (also after saving as XCF); an active
layer that does not start at the origin with a soft elliptical selection (result directly above it, alpha 0
outside); a 16-bit image; a 32-bit float linear and a grayscale image (read as R'G'B'A u8, result in the image's
precision / base type); several results as a layer group; actionable errors (no daemon, bad token, no
selection); Fetch Finished Results brings back an unacknowledged result of this profile's client id; the plug-in
prints no deprecation or duplicate-mnemonic warnings (GIMP 3.2 runs it on Python 3.14 with PyGObject 3.58).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import gimp_runner  # noqa: E402

pytestmark = pytest.mark.editors

GIMP_TIMEOUT_S = 200


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/ws"


def _leave_unacknowledged_result(url: str, token: str, client_id: str) -> str:
    """Submit a job as the GIMP profile's client and disconnect without acknowledging the result."""
    from ace_protocol.client import BridgeClient
    from ace_protocol.images import ImagePayload

    client = BridgeClient(url, token, client_id=client_id, client_name="ace-bridge-gimp")
    client.connect()
    try:
        image = ImagePayload(32, 32, "rgba8", bytes([120, 60, 30, 255]) * (32 * 32))
        mask = ImagePayload(32, 32, "gray8", b"\xff" * (32 * 32))
        job = client.submit("inpaint", "left behind", image=image, mask=mask, params={"seed": 9, "steps": 2})
        kinds = [event.TYPE for event in job.events(timeout=120)]
        assert kinds[-1] == "done", kinds
        return str(job.id)
    finally:
        client.close()


@pytest.fixture(scope="module", params=gimp_runner.install_params())
def gimp_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    install = gimp_runner.require(request.param)  # before building the tiny model, so a skip is instant
    tiny_model_root: Path = request.getfixturevalue("tiny_model_root")
    from ace_protocol.client import BridgeClient
    from acegimp_logic import STATE_FILE, ProfileState
    from daemon_fixture import start_process_daemon

    from bridge_server.install.gimp import install_gimp

    work = tmp_path_factory.mktemp(f"gimp-{install.series}")
    profile = work / "profile"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache/wheels"))
        plugin_dir = install_gimp(profile)
    daemon = start_process_daemon(work / "home", tiny_root=tiny_model_root)
    try:
        probe = BridgeClient(daemon.url, daemon.token, client_name="test-probe")
        welcome = probe.connect()
        probe.close()
        tasks = [t for t in welcome.tasks if isinstance(t, dict)]
        offered = {t["name"] for t in tasks}
        fetch_job = None
        steps = ["tasks", "offset_layer_soft_selection", "sixteen_bit", "other_precisions", "several_results", "errors"]
        if "inpaint" in offered:
            client_id = ProfileState(profile / STATE_FILE).client_id
            # As the plug-in's own earlier run would: the daemon gives a client_id's first holder a resume secret,
            # which must land where the plug-in looks for it (its config folder inside the GIMP profile's XDG
            # config), or every later call of the plug-in with that client_id is refused.
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("ACE_BRIDGE_CONFIG_DIR", str(profile / "xdg-config" / "ace-bridge"))
                fetch_job = _leave_unacknowledged_result(daemon.url, daemon.token, client_id)
            steps.append("fetch_results")
            # The painter's workflow (issue 17): strength, preview then apply, expand, control layer, history.
            steps += ["strength", "preview_then_apply", "expand", "recent_results_and_reuse"]
        if "local_edit" in offered:
            steps.append("control_layer")
        geometry = (
            "python-fu-ace-bridge-inpaint"
            if "inpaint" in offered
            else next(t["gimp_procedure"] for t in tasks if t["needs_image"] and t["needs_selection"])
        )
        config = {
            "url": daemon.url,
            "token": daemon.token,
            "tasks": tasks,
            "plugin_dir": str(plugin_dir),
            "work_dir": str(work),
            "out": str(work / "checks.json"),
            "dead_url": _closed_port_url(),
            "geometry_procedure": geometry,
            "selection_procedure": geometry,
            "xcf_task": "inpaint",
            "fetch_expected": 1,
            "fetch_job_id": fetch_job,
            "steps": steps,
        }
        (work / "config.json").write_text(json.dumps(config))
        start = time.monotonic()
        rc, output = gimp_runner.run_gimp_batch(
            HERE / "gimp_scripts" / "gimp_checks.py",
            profile,
            GIMP_TIMEOUT_S,
            env={"ACE_GIMP_CHECKS_CONFIG": str(work / "config.json"), "PYTHONWARNINGS": "default"},
            binds=[work],
            install=install,
        )
        elapsed = time.monotonic() - start
    finally:
        daemon.stop()
    try:
        checks = json.loads((work / "checks.json").read_text())
    except (OSError, ValueError):
        checks = {}
    return {
        "rc": rc,
        "output": output,
        "checks": checks,
        "tasks": tasks,
        "elapsed": elapsed,
        "daemon_log": daemon,
        "install": install,
    }


def _assert_prefixed(run: dict, *prefixes: str, minimum: int = 1) -> None:
    selected = {k: v for k, v in run["checks"].items() if k.split(":")[0] in prefixes or k in prefixes}
    assert len(selected) >= minimum, (
        f"expected checks {prefixes}, got {sorted(run['checks'])}\n--- GIMP output ---\n{run['output'][-4000:]}"
    )
    failed = {k: v[1] for k, v in selected.items() if not v[0]}
    assert not failed, (
        f"failed inside GIMP: {json.dumps(failed, indent=1)}\n--- GIMP output ---\n" + run["output"][-3000:]
    )


def test_gimp_batch_ran(gimp_run):
    assert gimp_run["rc"] == 0, gimp_run["output"][-4000:]
    assert gimp_run["checks"], gimp_run["output"][-4000:]


def test_every_offered_task_adds_one_layer_at_the_region(gimp_run):
    names = [t["name"] for t in gimp_run["tasks"]]
    assert names, "the daemon offers no task"
    _assert_prefixed(gimp_run, *names, minimum=5 * len(names))


def test_active_layer_off_origin_with_soft_elliptical_selection(gimp_run):
    _assert_prefixed(gimp_run, "soft", minimum=8)


def test_sixteen_bit_image(gimp_run):
    _assert_prefixed(gimp_run, "16bit", minimum=5)


def test_float_linear_image(gimp_run):
    """A 32-bit float linear image: read as R'G'B'A u8 (sRGB-encoded), result stored as linear float."""
    _assert_prefixed(gimp_run, "float", minimum=8)


def test_grayscale_image(gimp_run):
    """A grayscale image: read as R'G'B'A u8 (R = G = B), result a gray layer."""
    _assert_prefixed(gimp_run, "gray", minimum=6)


def test_several_results_arrive_as_a_layer_group(gimp_run):
    _assert_prefixed(gimp_run, "group", minimum=2)


def test_actionable_errors(gimp_run):
    _assert_prefixed(gimp_run, "no_selection", "no_daemon", "bad_token", "errors", minimum=4)


def test_provenance_survives_saving_as_xcf(gimp_run):
    if "inpaint" not in {t["name"] for t in gimp_run["tasks"]}:
        pytest.skip("the demo model does not offer inpaint")
    _assert_prefixed(gimp_run, "xcf_keeps_provenance")


def test_fetch_finished_results(gimp_run):
    if "inpaint" not in {t["name"] for t in gimp_run["tasks"]}:
        pytest.skip("the demo model does not offer inpaint")
    _assert_prefixed(gimp_run, "fetch", minimum=2)


def test_no_deprecation_or_mnemonic_warnings(gimp_run):
    """Every procedure ran with PYTHONWARNINGS=default: the plug-in printed no DeprecationWarning (nor PyGObject's
    PyGIDeprecationWarning) and GTK no duplicate-mnemonic warning."""
    lines = gimp_runner.warning_lines(gimp_run["output"])
    assert not lines, f"GIMP {gimp_run['install'].version}:\n" + "\n".join(lines[:20])


# ------------------------------------------------------------------ the painter's workflow (issue 17)


def _needs_inpaint(run: dict) -> None:
    if "inpaint" not in {t["name"] for t in run["tasks"]}:
        pytest.skip("the demo model does not offer inpaint")


def test_strength_low_keeps_the_painted_colours(gimp_run):
    """Story 2: at strength 0.05 what was painted carries into the result (a red and a blue painting differ), at 1.0
    it is redrawn from noise (they do not); the job sends the strength and the daemon runs it."""
    _needs_inpaint(gimp_run)
    _assert_prefixed(gimp_run, "strength", minimum=9)


def test_preview_then_apply_on_the_canvas(gimp_run):
    """Story 1: one temporary preview layer at a time; Apply keeps the chosen one; Discard leaves the image as it
    was; an expand's preview grows the canvas and Discard takes it back."""
    _needs_inpaint(gimp_run)
    _assert_prefixed(gimp_run, "preview", minimum=6)


def test_expand_canvas_generates_the_new_area(gimp_run):
    """Story 3: Expand Canvas grows the canvas by L,T,R,B; one result layer covers it, the new area is opaque and the
    old picture is unchanged inside the seam."""
    _needs_inpaint(gimp_run)
    _assert_prefixed(gimp_run, "expand", minimum=5)


def test_control_layer_runs_as_no_preprocess(gimp_run):
    """Story 4: Local Edit with a control layer and the mode left at default sends mode no_preprocess."""
    if "local_edit" not in {t["name"] for t in gimp_run["tasks"]}:
        pytest.skip("the demo model does not offer local_edit")
    _assert_prefixed(gimp_run, "control")


def test_painter_prompt_recent_results_and_reuse(gimp_run):
    """Stories 5 and 6: the painter's words reach ACE++ with the task's wording and are kept as a recent prompt;
    Recent Results brings this image's result back from the daemon's history at its place with its provenance;
    its prompt and seed are reused; another image has none."""
    _needs_inpaint(gimp_run)
    _assert_prefixed(gimp_run, "recent", "prompts", "reuse", minimum=7)
