"""What the Krita plugin keeps to itself (no Krita, no Qt): settings, the docker's form; and install/package.
The editor-neutral logic it uses is tested in tests/unit/test_ace_editor_*.py."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins_krita"))

from ace_bridge.model import Settings, docker_fields, mask_is_full, option_fields  # noqa: E402
from ace_editor import forms  # noqa: E402
from ace_protocol.tasks import STEPS, TASKS  # noqa: E402


def test_settings_round_trip_and_bad_values_reset():
    s = Settings(url="ws://h:1/v1/ws", token="t", task="inpaint", seed_mode="fixed", seed=9, steps=4, count=2)
    assert Settings.from_json(s.to_json()) == s
    bad = Settings.from_json('{"steps": "many", "source": "nowhere", "seed_mode": "x", "unknown": 1, "count": 3}')
    assert (bad.steps, bad.source, bad.seed_mode, bad.count) == (0, "image", "random", 3)
    assert Settings.from_json("not json") == Settings()
    assert Settings.from_json("[1, 2]") == Settings()


def test_new_settings_leave_steps_count_and_feather_to_the_daemon():
    s = Settings()
    assert forms.params_from(TASKS["inpaint"], s.param_values(seed=5)) == {"seed": 5}


def test_settings_of_version_1_stop_sending_the_old_defaults():
    """Version 1 always sent 28 steps (the bug that hid the panel's default steps from Krita users)."""
    old = Settings.from_json('{"version": 1, "steps": 28, "count": 1, "feather": 8, "seed": 4}')
    assert (old.steps, old.count, old.feather, old.seed, old.version) == (0, 0, -1, 4, 2)
    chosen = Settings.from_json('{"version": 1, "steps": 12, "count": 2, "feather": 3}')
    assert (chosen.steps, chosen.count, chosen.feather) == (12, 2, 3)


def test_docker_fields_come_from_the_table_or_the_daemons_welcome():
    fields = docker_fields()
    assert list(fields) == ["steps", "count", "feather"]
    assert (fields["steps"].default, fields["steps"].maximum, fields["steps"].unset) == (STEPS.default, 100, 0)
    wire = TASKS["inpaint"].to_wire()
    next(p for p in wire["params"] if p["name"] == "steps")["default"] = 40  # the panel's default steps
    assert docker_fields(wire)["steps"].default_text() == "default (40)"


def test_task_options_are_the_tasks_choices_and_switches():
    names = {
        t: [f.name for f in option_fields(TASKS[t].to_wire())] for t in ("local_edit", "reference_edit", "inpaint")
    }
    assert "mode" in names["local_edit"] and "face" in names["reference_edit"] and names["inpaint"] == ["strength"]
    mode = next(f for f in option_fields(TASKS["local_edit"].to_wire()) if f.name == "mode")
    assert mode.choices[0] == "repaint" and forms.params_from(TASKS["local_edit"], {"mode": "repaint"}) == {}


def test_the_masked_tasks_offer_a_strength_slider_over_the_tables_range_and_the_others_none():
    for name, task in TASKS.items():
        strength = [f for f in option_fields(task.to_wire()) if f.name == "strength"]
        assert bool(strength) == (task.param("strength") is not None), name
        if strength:
            assert (strength[0].kind, strength[0].minimum, strength[0].maximum) == ("float", 0.05, 1.0)
    assert not any(f.name == "strength" for f in option_fields(TASKS["instruct"].to_wire()))
    assert forms.params_from(TASKS["inpaint"], {"strength": 0.3}) == {"strength": 0.3}


def test_mask_is_full():
    assert mask_is_full(b"\xff" * 10)
    assert not mask_is_full(b"\xff" * 9 + b"\xfe")
    assert not mask_is_full(b"")


# ------------------------------------------------------------------ install / package


@pytest.fixture
def fake_vendor(monkeypatch):
    """No package index in unit tests: `_vendor/` gets the shared packages and stand-in msgpack and websockets."""
    import bridge_server.install.krita as krita_install
    import bridge_server.install.vendor as vendor

    def vendor_libraries(target: Path) -> None:
        for name in ("msgpack", "websockets"):
            (target / name).mkdir(parents=True, exist_ok=True)
            (target / name / "__init__.py").write_text("")

    monkeypatch.setattr(vendor, "vendor_libraries", vendor_libraries)
    monkeypatch.setattr(vendor, "verify_vendored", lambda target: None)
    return krita_install


def test_install_enables_and_uninstall_disables(tmp_path, fake_vendor):
    rc = tmp_path / "config" / "kritarc"
    rc.parent.mkdir()
    rc.write_text("[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_ace_bridge=false\n")
    profile = tmp_path / "krita"
    pkg = fake_vendor.install_krita(profile, rc)
    assert (pkg / "__init__.py").is_file() and (pkg / "_vendor" / "ace_protocol" / "client.py").is_file()
    assert (pkg / "_vendor" / "__init__.py").is_file() and (pkg / "_vendor" / "ace_editor" / "jobs.py").is_file()
    assert (profile / "pykrita" / "ace_bridge.desktop").is_file()
    assert (profile / "actions" / "ace_bridge.action").is_file()
    assert not list(pkg.rglob("__pycache__"))
    text = rc.read_text()
    assert "enable_ace_bridge=true" in text and "enable_other=true" in text and "foo=1" in text
    assert text.count("enable_ace_bridge") == 1
    fake_vendor.install_krita(profile, rc)  # idempotent
    assert rc.read_text() == text
    fake_vendor.uninstall_krita(profile, rc)
    assert not (profile / "pykrita" / "ace_bridge").exists()
    assert "enable_ace_bridge=false" in rc.read_text() and "enable_other=true" in rc.read_text()


def test_install_default_paths_follow_xdg(tmp_path, monkeypatch, fake_vendor):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    pkg = fake_vendor.install_krita(None)
    assert pkg == tmp_path / "data" / "krita" / "pykrita" / "ace_bridge"
    assert "[python]\nenable_ace_bridge=true" in (tmp_path / "cfg" / "kritarc").read_text()


def test_package_zip_layout(tmp_path, fake_vendor):
    out = fake_vendor.package_krita(tmp_path / "dist" / "ace_bridge.zip")
    names = zipfile.ZipFile(out).namelist()
    assert "ace_bridge.desktop" in names and "ace_bridge.action" in names
    assert "ace_bridge/__init__.py" in names and "ace_bridge/_vendor/ace_protocol/__init__.py" in names
    assert "ace_bridge/_vendor/msgpack/__init__.py" in names


def test_installed_plugin_imports_its_packages_privately(tmp_path, monkeypatch):
    """The real vendoring (cached sdists): inside the plugin everything comes from `ace_bridge._vendor`, and the
    editor's Python gets no global msgpack, websockets, ace_protocol or ace_editor, nor a sys.path entry."""
    from bridge_server.install.krita import install_krita

    repo = Path(__file__).resolve().parents[2]
    monkeypatch.setenv(
        "ACE_BRIDGE_WHEEL_CACHE", os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(repo / ".cache/wheels")
    )
    pkg = install_krita(tmp_path / "krita", tmp_path / "kritarc")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); before = list(sys.path)\n"
        "import ace_bridge.model, ace_bridge.bundled as b\n"
        "assert b.jobs.__name__ == 'ace_bridge._vendor.ace_editor.jobs', b.jobs.__name__\n"
        "assert b.client.ClientConnection.__module__ == 'ace_bridge._vendor.websockets.sync.client'\n"
        "leaked = [n for n in ('msgpack', 'websockets', 'ace_protocol', 'ace_editor') if n in sys.modules]\n"
        "assert not leaked, leaked\n"
        "assert sys.path == before, sys.path"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code, str(pkg.parent)],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "ACE_BRIDGE_NO_REGISTER": "1"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_recent_prompts_and_the_advanced_switch_are_kept_in_the_settings():
    s = Settings(advanced_prompt=True, recent_prompts=["make the hat red", "add a scarf"])
    back = Settings.from_json(s.to_json())
    assert back.advanced_prompt is True and back.recent_prompts == ["make the hat red", "add a scarf"]
    bad = Settings.from_json('{"advanced_prompt": "yes", "recent_prompts": "make the hat red"}')
    assert bad.advanced_prompt is False and bad.recent_prompts == []
    assert Settings().recent_prompts is not Settings().recent_prompts  # no list shared between instances


def test_the_history_annotation_round_trips_through_a_document():
    """history_store on an object with Krita's annotation calls: what it writes, it reads back."""
    from ace_bridge import history_store
    from ace_editor.history import JobRecord
    from ace_editor.jobs import ResultImage

    class Doc:
        def __init__(self):
            self.annotations = {}

        def setAnnotation(self, key, description, data):  # noqa: N802 - Krita's name
            self.annotations[key] = bytes(data)

        def annotation(self, key):
            return self.annotations.get(key, b"")

    doc = Doc()
    assert history_store.load(doc) == []
    record = JobRecord("j1", "d", "local_edit", "Make the hat red in {image} mask.", {}, (0, 0, 1, 1), "image", None)
    record.results, record.state, record.instruction = [ResultImage(0, 1, 5, 1, 1, b"\1\2\3\4")], "done", "make it red"
    history_store.save(doc, [record])
    assert history_store.load(doc) == [record]
    doc.annotations[history_store.HISTORY_ANNOTATION] = b"{}"
    with pytest.raises(history_store.HistoryFormatError):
        history_store.load(doc)
