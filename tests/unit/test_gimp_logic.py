"""The GIMP plug-in's pure logic (no gi) and `ace-bridge install/package gimp`, on the host."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import acegimp_logic as logic  # noqa: E402
from ace_protocol.geometry import Bounds, Extent  # noqa: E402
from ace_protocol.images import ImagePayload  # noqa: E402
from ace_protocol.messages import Done, Progress, Result  # noqa: E402
from ace_protocol.tasks import TASKS  # noqa: E402

CANVAS = Extent(96, 64)


def action(task: str) -> logic.Action:
    return next(a for a in logic.ACTIONS if a.task == task)


@pytest.fixture
def wheel_cache(monkeypatch):
    """Keep downloaded sdists in the repo's ignored .cache so tests hit the index once per checkout."""
    cache = os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(REPO / ".cache" / "wheels")
    monkeypatch.setenv("ACE_BRIDGE_WHEEL_CACHE", cache)
    return Path(cache)


def test_one_action_per_task_with_the_designed_procedure_names():
    assert [a.task for a in logic.ACTIONS] == list(TASKS)
    assert {a.procedure for a in logic.ACTIONS} == {t.gimp_procedure for t in TASKS.values()}
    assert all(a.procedure.startswith("python-fu-ace-bridge-") for a in logic.ACTIONS)
    assert logic.FETCH_PROCEDURE not in logic.ACTIONS_BY_PROCEDURE


@pytest.mark.parametrize("task", [t for t, s in TASKS.items() if s.needs_selection])
def test_task_needing_a_selection_without_one_says_so(task):
    with pytest.raises(logic.UserError, match="make a selection first"):
        logic.plan_job(action(task), logic.Settings(), CANVAS, None)
    with pytest.raises(logic.UserError, match="make a selection first"):
        logic.plan_job(action(task), logic.Settings(), CANVAS, Bounds(5, 5, 0, 0))


def test_no_selection_means_the_whole_image_where_allowed():
    plan = logic.plan_job(action("instruct"), logic.Settings(), CANVAS, None)
    assert plan.region == Bounds(0, 0, 96, 64) and plan.read_image and plan.selection is None
    assert logic.full_mask(plan.region).data == b"\xff" * (96 * 64)


@pytest.mark.parametrize(("source", "placement"), [("visible", "top"), ("layer", "above-active")])
def test_region_padding_and_placement(source, placement):
    settings = logic.Settings(padding=4, source=source)
    plan = logic.plan_job(action("local_edit"), settings, CANVAS, Bounds(20, 10, 30, 20))
    assert plan.region == Bounds(16, 6, 38, 28)
    assert plan.placement == placement


def test_padding_is_clamped_to_the_canvas_and_automatic_when_negative():
    plan = logic.plan_job(action("inpaint"), logic.Settings(padding=-1), CANVAS, Bounds(0, 0, 10, 10))
    assert plan.region.x == 0 and plan.region.y == 0 and plan.region.width >= 10
    assert Bounds(0, 0, 96, 64).contains(plan.region)


def test_tasks_without_an_image_generate_into_the_selection_or_canvas():
    plan = logic.plan_job(action("generate"), logic.Settings(source="layer"), CANVAS, Bounds(8, 8, 40, 30))
    assert plan.region == Bounds(8, 8, 40, 30) and not plan.read_image and plan.placement == "top"
    params = logic.build_params(action("generate"), logic.Settings(), plan)
    assert params["width"] == 64 and params["height"] == 64  # clamped to the task's minimum
    plan = logic.plan_job(action("generate"), logic.Settings(), Extent(640, 480), None)
    assert logic.build_params(action("generate"), logic.Settings(width=512), plan)["width"] == 512


def test_params_only_name_what_the_task_has_and_validate():
    plan = logic.plan_job(action("local_edit"), logic.Settings(), CANVAS, Bounds(1, 1, 5, 5))
    settings = logic.Settings(seed=5, steps=2, count=3, feather=4, mode="canny", face=True, width=100)
    params = logic.build_params(action("local_edit"), settings, plan)
    assert params == {"seed": 5, "steps": 2, "count": 3, "feather": 4, "mode": "canny"}  # guidance: not set
    assert "face" not in params and "width" not in params and params["mode"] == "canny"
    TASKS["local_edit"].validate_params(params)
    ref = logic.build_params(action("reference_edit"), settings, plan)
    assert ref["face"] is True and "mode" not in ref
    TASKS["reference_edit"].validate_params(ref)


def test_arguments_left_at_their_defaults_leave_the_job_to_the_daemon():
    """A procedure run with its default arguments sends no steps, count, guidance or feather: the daemon's
    defaults apply (the control panel's default steps, the task's guidance)."""
    plan = logic.plan_job(action("inpaint"), logic.Settings(), CANVAS, Bounds(1, 1, 5, 5))
    assert logic.build_params(action("inpaint"), logic.Settings(), plan) == {}
    defaults = {a.name: a.default for a in logic.procedure_arguments(action("inpaint"))}
    settings = logic.Settings(
        **{k: v for k, v in defaults.items() if k in ("seed", "steps", "count", "guidance", "feather", "padding")}
    )
    assert logic.build_params(action("inpaint"), settings, plan) == {}


def test_procedure_arguments_come_from_the_task_table():
    args = {a.name: a for a in logic.procedure_arguments(action("local_edit"))}
    assert list(args)[0] == "prompt" and {"source", "mode"} <= set(args) and "width" not in args
    steps = args["steps"]
    assert (steps.kind, steps.minimum, steps.maximum, steps.default) == ("int", 0, 100, 0)
    assert "default 28" in steps.help and "0: leave it to the daemon" in steps.help
    assert args["guidance"].kind == "double" and args["guidance"].default == -1.0
    assert args["mode"].choices[1][0] == "canny" and args["seed"].maximum == logic.SEED_ARG_MAX
    ref = {a.name: a for a in logic.procedure_arguments(action("reference_edit"))}
    assert ref["reference"].kind == "layer" and ref["face"].kind == "boolean"
    gen = {a.name for a in logic.procedure_arguments(action("generate"))}
    assert {"width", "height"} <= gen and "source" not in gen and "padding" not in gen


def test_task_not_offered_by_the_loaded_model_is_named():
    offered = [{"name": "inpaint"}, {"name": "generate"}]
    logic.check_offered(action("inpaint"), offered, {"model": "tiny"})
    with pytest.raises(logic.UserError) as err:
        logic.check_offered(action("instruct"), offered, {"model": "tiny"})
    text = str(err.value)
    assert "Edit with Instruction" in text and "tiny" in text and "generate, inpaint" in text


def test_status_lines_carry_the_plugins_prefix():
    assert logic.queued_text(2) == "ACE++: Queued: position 2"
    assert logic.queued_text(0) == "ACE++: Waiting: next in line"


def test_profile_state_keeps_a_stable_client_id(tmp_path):
    path = tmp_path / "profile" / logic.STATE_FILE
    first = logic.ProfileState(path)
    assert first.client_id.startswith("gimp-") and logic.ProfileState(path).client_id == first.client_id


def test_wait_for_job_prefixes_its_status_lines():
    class Job:
        id = "job-1"

        def events(self):
            yield Progress(job_id="job-1", step=1, total=2)
            yield Done(job_id="job-1")

    seen = []
    logic.wait_for_job(Job(), logic.HeadlessUi(lambda f, t: seen.append((f, t))))
    assert seen == [(0.5, "ACE++: Step 1/2")]


def test_provenance_parasite_is_one_record():
    result = Result(
        job_id="j",
        index=0,
        count=1,
        seed=7,
        image=ImagePayload(1, 1, "rgba8", b"\0" * 4),
        provenance={"model": "tiny", "task": "inpaint", "editor": "gimp 3.0"},
    )
    data = logic.provenance_bytes(
        result,
        {"task": "inpaint", "prompt": "a vase", "params": {"steps": 2}, "region": [1, 2, 3, 4], "source": "visible"},
    )
    value = logic.parse_provenance(data)
    assert value["seed"] == 7 and value["model"] == "tiny" and value["prompt"] == "a vase"
    assert value["params"] == {"steps": 2} and value["job_id"] == "j" and value["editor"] == "gimp 3.0"
    assert value["format"] == logic.PARASITE_NAME


def test_install_gimp_into_a_profile(tmp_path, wheel_cache):
    from bridge_server.install.gimp import install_gimp

    folder = install_gimp(tmp_path / "GIMP" / "3.0")
    assert folder == tmp_path / "GIMP" / "3.0" / "plug-ins" / "ace-bridge"
    entry = folder / "ace-bridge.py"
    assert entry.stat().st_mode & stat.S_IXUSR
    for rel in (
        "acegimp_logic.py",
        "acegimp_gimp.py",
        "acegimp_bundled.py",
        "_vendor/__init__.py",
        "_vendor/ace_protocol/client.py",
        "_vendor/ace_editor/jobs.py",
        "_vendor/msgpack/fallback.py",
        "_vendor/websockets/sync/client.py",
    ):
        assert (folder / rel).is_file(), rel
    assert not list((folder / "_vendor").rglob("*.so")) and not list((folder / "_vendor").rglob("*.pyd"))
    # The plug-in's own import setup works with nothing but the folder (no site-packages), as GIMP runs it (its
    # folder on sys.path), and the vendored packages stay private: no global msgpack, websockets or ace_protocol.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; import acegimp_logic, _vendor.msgpack as m; "
        "assert m.Packer.__module__ == '_vendor.msgpack.fallback'; "
        "assert acegimp_logic.jobs.messages.__name__ == '_vendor.ace_protocol.messages'; "
        "leaked = [n for n in ('msgpack', 'websockets', 'ace_protocol', 'ace_editor') if n in sys.modules]; "
        "assert not leaked, leaked; print(acegimp_logic.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code, str(folder)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(folder))
    # Reinstalling replaces the folder (stale files go).
    (folder / "stale.py").write_text("")
    install_gimp(tmp_path / "GIMP" / "3.0")
    assert not (folder / "stale.py").exists()


def test_package_gimp_builds_a_zip_with_the_run_bit(tmp_path, wheel_cache):
    from bridge_server.install.gimp import package_gimp

    out = package_gimp(tmp_path / "dist" / "ace-bridge-gimp.zip")
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert "ace-bridge/ace-bridge.py" in names and "ace-bridge/_vendor/msgpack/__init__.py" in names
        assert all(n.startswith("ace-bridge/") and "__pycache__" not in n for n in names)
        mode = zf.getinfo("ace-bridge/ace-bridge.py").external_attr >> 16
        assert mode & 0o111


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("linux", "xdg/GIMP/3.0"), ("win32", "appdata/GIMP/3.0"), ("darwin", "Library/Application Support/GIMP/3.0")],
)
def test_default_profile_per_platform(tmp_path, monkeypatch, platform, expected):
    from bridge_server.install import gimp

    monkeypatch.setattr(gimp.sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))
    monkeypatch.setattr(gimp.Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(gimp.shutil, "which", lambda name: None)  # no GIMP program on PATH
    root = (tmp_path / expected).parent
    # No profile yet: the newest known version's, which GIMP 3.2 reads (not 3.0 and its one-time migration).
    assert gimp.default_profile_dir() == root / "3.2"
    assert gimp.default_profile_dirs() == [root / "3.2"]
    # An existing 3.0 profile is used; an explicit version is honoured.
    (tmp_path / expected).mkdir(parents=True)
    assert gimp.default_profile_dir() == tmp_path / expected
    assert gimp.default_profile_dir("3.2") == root / "3.2"
    # Both exist: the newest first, and an install goes into both.
    root.joinpath("3.2").mkdir()
    assert gimp.default_profile_dirs() == [root / "3.2", tmp_path / expected]
    assert gimp.default_profile_dir() == root / "3.2"


def _linux_home(tmp_path, monkeypatch, programs=()):
    from bridge_server.install import gimp

    monkeypatch.setattr(gimp.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(gimp.Path, "home", classmethod(lambda cls: tmp_path))
    monkeypatch.setattr(gimp.shutil, "which", lambda name: f"/usr/bin/{name}" if name in programs else None)
    return gimp, tmp_path / "xdg" / "GIMP"


@pytest.mark.parametrize(
    ("programs", "expected"),
    [
        ((), ["3.2"]),
        (("gimp-3.0",), ["3.0"]),
        (("gimp-console-3.2",), ["3.2"]),
        (("gimp-3.0", "gimp-3.2"), ["3.2", "3.0"]),
    ],
)
def test_before_the_first_start_the_installed_gimps_profiles(tmp_path, monkeypatch, programs, expected):
    """No profile yet: the profile of each GIMP 3 whose programs are on PATH, else the newest known (3.2)."""
    gimp, root = _linux_home(tmp_path, monkeypatch, programs)
    assert gimp.default_profile_dirs() == [root / v for v in expected]


def test_every_existing_3x_profile_newest_first_flatpak_too(tmp_path, monkeypatch):
    gimp, root = _linux_home(tmp_path, monkeypatch, ("gimp-3.0",))
    flatpak = tmp_path / ".var/app/org.gimp.GIMP/config/GIMP"
    for folder in (root / "3.0", root / "3.4", root / "2.10", root / "notes", flatpak / "3.2"):
        folder.mkdir(parents=True)
    (root / "3.6").write_text("a file, not a profile")
    assert gimp.default_profile_dirs() == [root / "3.4", flatpak / "3.2", root / "3.0"]


def test_cli_install_gimp_before_the_first_start_lands_where_gimp_32_looks(tmp_path, wheel_cache):
    """`ace-bridge install gimp` with no GIMP profile yet: the plug-in is in GIMP/3.2/plug-ins."""
    env = {
        **os.environ,
        "ACE_BRIDGE_WHEEL_CACHE": str(wheel_cache),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PATH": "/nonexistent",
    }
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "install", "gimp"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "xdg/GIMP/3.2/plug-ins/ace-bridge/ace-bridge.py").is_file(), out.stdout
    assert sorted(p.name for p in (tmp_path / "xdg/GIMP").iterdir()) == ["3.2"]
    # With a 3.0 profile as well (an older GIMP started once), both get the plug-in.
    (tmp_path / "xdg/GIMP/3.0").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "install", "gimp"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for version in ("3.2", "3.0"):
        assert (tmp_path / f"xdg/GIMP/{version}/plug-ins/ace-bridge/ace-bridge.py").is_file(), out.stdout
    assert out.stdout.count("installed the gimp plugin into") == 2, out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "uninstall", "gimp"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert not list((tmp_path / "xdg/GIMP").glob("*/plug-ins/ace-bridge")), out.stdout


def test_state_file_is_json(tmp_path):
    state = logic.ProfileState(tmp_path / logic.STATE_FILE)
    assert json.loads((tmp_path / logic.STATE_FILE).read_text())["client_id"] == state.client_id


def test_cli_install_and_uninstall_gimp(tmp_path, wheel_cache):
    env = {**os.environ, "ACE_BRIDGE_WHEEL_CACHE": str(wheel_cache)}
    profile = tmp_path / "GIMP" / "3.2"
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "install", "gimp", "--profile-dir", str(profile)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert (profile / "plug-ins" / "ace-bridge" / "ace-bridge.py").stat().st_mode & stat.S_IXUSR
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "uninstall", "gimp", "--profile-dir", str(profile)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert not (profile / "plug-ins" / "ace-bridge").exists()


def _mnemonic(label: str) -> str | None:
    i = label.find("_")
    return label[i + 1].lower() if 0 <= i < len(label) - 1 else None


@pytest.mark.parametrize("action", logic.ACTIONS, ids=lambda a: a.procedure)
def test_every_dialog_label_has_its_own_mnemonic(action):
    """GIMP 3.2's procedure dialog prints a warning for each mnemonic used twice (two arguments, or an argument and
    a dialog button) and for each argument without one: every label has one, all differ, none is a button's."""
    labels = {a.name: a.label for a in logic.procedure_arguments(action)} | logic.CONNECTION_LABELS
    keys = {name: _mnemonic(label) for name, label in labels.items()}
    assert all(keys.values()), {n: labels[n] for n, k in keys.items() if not k}
    taken = [k for k in keys.values() if k in logic.DIALOG_BUTTON_MNEMONICS]
    assert not taken, {n: labels[n] for n, k in keys.items() if k in taken}
    assert len(set(keys.values())) == len(keys), sorted(keys.items(), key=lambda item: item[1])


def test_local_edit_takes_an_optional_control_layer_and_subject_requires_its_reference():
    """A GIMP user runs Local Edit without picking a layer; a control layer is offered, never demanded."""
    local = logic.ACTIONS_BY_PROCEDURE[logic.TASKS["local_edit"].gimp_procedure]
    subject = logic.ACTIONS_BY_PROCEDURE[logic.TASKS["subject"].gimp_procedure]
    assert local.takes_reference and not local.reference_required and local.reference_is_control
    assert subject.takes_reference and subject.reference_required and not subject.reference_is_control
    labels = {a.name: a.label for a in logic.procedure_arguments(local)}
    assert labels["reference"] == "Control la_yer"
    labels = {a.name: a.label for a in logic.procedure_arguments(subject)}
    assert labels["reference"] == "Reference la_yer"
