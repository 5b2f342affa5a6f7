"""Pure logic of the Krita plugin (no Krita, no Qt) and the install/package functions."""

from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins_krita"))

from ace_bridge.model import (  # noqa: E402
    ProvenanceStore,
    Settings,
    apply_template,
    format_eta,
    group_name,
    layer_name,
    mask_is_full,
    pick_seed,
    progress_text,
    provenance_record,
    task_params,
)
from ace_protocol.tasks import TASKS  # noqa: E402


@pytest.mark.parametrize(
    ("task", "prompt", "seed", "index", "count", "expected"),
    [
        ("local_edit", "make it green in {image}.", 5, 0, 1, "[ACE local_edit] make it green (seed 5)"),
        ("instruct", "{image} watercolour", 7, 0, 1, "[ACE instruct] watercolour (seed 7)"),
        ("inpaint", "a vase", 1, 1, 3, "[ACE inpaint] a vase (seed 1) #2/3"),
        ("inpaint", "x" * 80, 2, 0, 1, "[ACE inpaint] " + "x" * 39 + "… (seed 2)"),
    ],
)
def test_layer_name_says_task_prompt_seed(task, prompt, seed, index, count, expected):
    assert layer_name(task, prompt, seed, index, count) == expected


def test_group_name_counts_images():
    assert group_name("inpaint", "a vase", 3, 4).endswith("(seed 3) ×4")


def test_settings_round_trip_and_bad_values_reset():
    s = Settings(url="ws://h:1/v1/ws", token="t", task="inpaint", seed_mode="fixed", seed=9, steps=4, count=2)
    assert Settings.from_json(s.to_json()) == s
    bad = Settings.from_json('{"steps": "many", "source": "nowhere", "seed_mode": "x", "unknown": 1, "count": 3}')
    assert (bad.steps, bad.source, bad.seed_mode, bad.count) == (28, "image", "random", 3)
    assert Settings.from_json("not json") == Settings()
    assert Settings.from_json("[1, 2]") == Settings()


def test_pick_seed_fixed_and_random():
    assert pick_seed("fixed", 42) == 42
    assert pick_seed("fixed", -5) == 0
    assert pick_seed("random", 42, random.Random(1)) == pick_seed("random", 0, random.Random(1))


def test_task_params_filters_and_clamps_against_the_real_table():
    wire = TASKS["local_edit"].to_wire()
    params = task_params(wire, {"seed": 3, "steps": 500, "count": 0, "feather": 8, "width": 512, "mode": "canny"})
    assert params == {"seed": 3, "steps": 100, "count": 1, "feather": 8, "mode": "canny"}
    TASKS["local_edit"].validate_params(params)  # what the plugin sends passes the daemon's validation


@pytest.mark.parametrize(
    ("template", "text", "expected"),
    [
        ("Remove the apple in {image} mask.", "make it green", "make it green in {image}."),
        ("{image} make it look like a watercolour painting", "pencil sketch", "{image} pencil sketch"),
        ("A lighthouse on a cliff at dusk.", "a castle", "a castle"),
        ("Remove the apple in {image} mask.", "turn {image} blue", "turn {image} blue"),
    ],
)
def test_apply_template(template, text, expected):
    assert apply_template(template, text) == expected


def test_mask_is_full():
    assert mask_is_full(b"\xff" * 10)
    assert not mask_is_full(b"\xff" * 9 + b"\xfe")
    assert not mask_is_full(b"")


def test_progress_texts():
    assert progress_text("queued", 3) == "Queued: position 3"
    assert progress_text("queued", 0) == "Waiting: next in line"
    assert progress_text("progress", step=2, total=8, eta_s=75) == "Step 2/8, about 1:15 left"
    assert progress_text("progress", step=2, total=8) == "Step 2/8"
    assert format_eta(4.4) == "4 s"


def test_provenance_store_round_trip_and_migration():
    store = ProvenanceStore()
    rec = provenance_record("inpaint", "a vase", 5, {"steps": 2}, (1, 2, 3, 4), "image", "j1", {"model": "tiny"})
    store.add("{uid}", rec)
    again = ProvenanceStore.from_bytes(store.to_bytes())
    assert again.get("{uid}")["model"] == "tiny" and again.get("{uid}")["params"] == {"steps": 2}
    old = b'{"records": [{"layer_id": "{a}", "seed": 1}]}'
    assert ProvenanceStore.from_bytes(old).get("{a}") == {"layer_id": "{a}", "seed": 1}
    for junk in (b"", b"\xff\xfe", b"[]", b'{"layers": 3}'):
        assert ProvenanceStore.from_bytes(junk).layers == {}


# ------------------------------------------------------------------ install / package


@pytest.fixture
def fake_vendor(monkeypatch):
    """No package index in unit tests: `_vendor/` gets stand-in msgpack and websockets packages."""
    import bridge_server.install.krita as krita_install

    def vendor_into(target: Path) -> None:
        for name in ("msgpack", "websockets"):
            (target / name).mkdir(parents=True, exist_ok=True)
            (target / name / "__init__.py").write_text("")

    monkeypatch.setattr(krita_install, "vendor_into", vendor_into)
    return krita_install


def test_install_enables_and_uninstall_disables(tmp_path, fake_vendor):
    rc = tmp_path / "config" / "kritarc"
    rc.parent.mkdir()
    rc.write_text("[General]\nfoo=1\n\n[python]\nenable_other=true\nenable_ace_bridge=false\n")
    profile = tmp_path / "krita"
    pkg = fake_vendor.install_krita(profile, rc)
    assert (pkg / "__init__.py").is_file() and (pkg / "_vendor" / "ace_protocol" / "client.py").is_file()
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
