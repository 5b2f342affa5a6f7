"""Where `ace-bridge install` puts the plug-ins (issue 15 item 2): Windows and macOS profile folders (they cannot
run here, so sys.platform and the environment are faked), Flathub's Krita and GIMP (detected by their sandbox
folder or `flatpak info`), the launcher record beside each plug-in, and the daemon found from inside a Flatpak
sandbox through the host's ~/.config/ace-bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    from bridge_server.install import flatpak, gimp, krita

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for mod in (flatpak, gimp, krita):
        monkeypatch.setattr(mod.Path, "home", classmethod(lambda cls: home))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "APPDATA", "LOCALAPPDATA", "FLATPAK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(flatpak.shutil, "which", lambda name: None)  # no krita, gimp or flatpak programs
    return home


@pytest.mark.parametrize(
    ("platform", "resources", "kritarc"),
    [
        ("win32", "AppData/Roaming/krita", "AppData/Local/kritarc"),
        ("darwin", "Library/Application Support/krita", "Library/Preferences/kritarc"),
        ("linux", ".local/share/krita", ".config/kritarc"),
    ],
)
def test_krita_profile_per_platform(home, monkeypatch, platform, resources, kritarc):
    from bridge_server.install import krita

    monkeypatch.setattr(krita.sys, "platform", platform)
    assert krita.default_profile_dir() == home / resources
    assert krita.kritarc_path() == home / kritarc
    assert krita.default_targets() == [(home / resources, home / kritarc)]
    if platform == "win32":
        monkeypatch.setenv("APPDATA", str(home / "roaming"))
        monkeypatch.setenv("LOCALAPPDATA", str(home / "local"))
        assert krita.default_profile_dir() == home / "roaming" / "krita"
        assert krita.kritarc_path() == home / "local" / "kritarc"


@pytest.mark.parametrize(
    ("platform", "profile"),
    [
        ("win32", "AppData/Roaming/GIMP/3.2"),
        ("darwin", "Library/Application Support/GIMP/3.2"),
    ],
)
def test_gimp_profile_on_windows_and_macos(home, monkeypatch, platform, profile):
    from bridge_server.install import gimp

    monkeypatch.setattr(gimp.sys, "platform", platform)
    assert gimp.default_profile_dirs() == [home / profile]
    (home / profile).parent.joinpath("3.0").mkdir(parents=True)
    assert gimp.default_profile_dirs() == [(home / profile).parent / "3.0"]


def test_flatpak_krita_is_detected_and_gets_its_own_profile(home, monkeypatch):
    from bridge_server.install import krita

    monkeypatch.setattr(krita.sys, "platform", "linux")
    (home / ".var/app/org.kde.krita").mkdir(parents=True)
    # Only the Flatpak: only its sandboxed profile.
    assert krita.default_targets() == [
        (home / ".var/app/org.kde.krita/data/krita", home / ".var/app/org.kde.krita/config/kritarc")
    ]
    # A native Krita as well (its resource folder exists): both.
    (home / ".local/share/krita").mkdir(parents=True)
    assert [t[0] for t in krita.default_targets()] == [
        home / ".local/share/krita",
        home / ".var/app/org.kde.krita/data/krita",
    ]


def test_flatpak_detected_through_flatpak_info(home, monkeypatch):
    from bridge_server.install import flatpak

    calls = []

    def run(argv, **kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0 if argv[-1] == "org.gimp.GIMP" else 1)

    monkeypatch.setattr(flatpak.shutil, "which", lambda name: "/usr/bin/flatpak" if name == "flatpak" else None)
    monkeypatch.setattr(flatpak.subprocess, "run", run)
    assert flatpak.installed("org.gimp.GIMP") and not flatpak.installed("org.kde.krita")
    assert calls[0] == ["/usr/bin/flatpak", "info", "org.gimp.GIMP"]


def test_flatpak_gimp_never_started_gets_the_32_profile(home, monkeypatch):
    from bridge_server.install import gimp

    monkeypatch.setattr(gimp.sys, "platform", "linux")
    (home / ".var/app/org.gimp.GIMP").mkdir(parents=True)
    assert gimp.default_profile_dirs() == [home / ".var/app/org.gimp.GIMP/config/GIMP/3.2"]
    monkeypatch.setattr(gimp.shutil, "which", lambda name: "/usr/bin/gimp-3.0" if name == "gimp-3.0" else None)
    assert gimp.default_profile_dirs() == [home / ".config/GIMP/3.0", home / ".var/app/org.gimp.GIMP/config/GIMP/3.2"]


def test_install_records_where_ace_bridge_lives(tmp_path, monkeypatch):
    from ace_editor import daemon

    import bridge_server.install.krita as krita_install
    import bridge_server.install.vendor as vendor

    monkeypatch.setattr(vendor, "vendor_libraries", lambda target: None)
    monkeypatch.setattr(vendor, "verify_vendored", lambda target: None)
    pkg = krita_install.install_krita(tmp_path / "krita", tmp_path / "kritarc")
    record = json.loads((pkg / daemon.LAUNCHER_FILE).read_text())
    assert Path(record["command"][0]).is_file() and record["version"]
    assert daemon.read_launcher_record(pkg) == record["command"]
    # The recorded command really is ace-bridge.
    out = subprocess.run([*record["command"], "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and record["version"] in out.stdout + out.stderr


def test_discovery_inside_a_flatpak_finds_the_hosts_config(tmp_path, monkeypatch):
    from ace_protocol import discovery

    home = tmp_path / "home"
    host_config = home / ".config" / "ace-bridge"
    host_config.mkdir(parents=True)
    (host_config / "runtime.json").write_text(json.dumps({"url": "ws://127.0.0.1:9999/v1/ws"}))
    (host_config / "token").write_text("ace_secret\n")
    monkeypatch.setattr(discovery.sys, "platform", "linux")
    monkeypatch.setattr(discovery.Path, "home", classmethod(lambda cls: home))
    for var in ("ACE_BRIDGE_CONFIG_DIR", "ACE_BRIDGE_URL", "ACE_BRIDGE_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".var/app/org.kde.krita/config"))
    monkeypatch.delenv("FLATPAK_ID", raising=False)
    if not Path("/.flatpak-info").exists():  # outside a sandbox the sandbox's own folder is all there is
        assert discovery.resolve().url == discovery.DEFAULT_URL
    monkeypatch.setenv("FLATPAK_ID", "org.kde.krita")
    assert discovery.config_dirs() == [home / ".var/app/org.kde.krita/config/ace-bridge", host_config]
    endpoint = discovery.resolve()
    assert endpoint.url == "ws://127.0.0.1:9999/v1/ws" and endpoint.token == "ace_secret"


def test_cli_install_krita_into_native_and_flatpak(tmp_path):
    """`ace-bridge install krita` with Flathub's Krita present: both profiles get the plug-in, both enabled."""
    home = tmp_path / "h"
    (home / ".var/app/org.kde.krita").mkdir(parents=True)
    (home / ".local/share/krita").mkdir(parents=True)
    wheel_cache = os.environ.get("ACE_BRIDGE_WHEEL_CACHE") or str(Path(__file__).resolve().parents[2] / ".cache/wheels")
    env = {**os.environ, "ACE_BRIDGE_WHEEL_CACHE": str(wheel_cache), "HOME": str(home), "PATH": "/nonexistent"}
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        env.pop(var, None)
    out = subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", "install", "krita"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("installed the krita plugin into") == 2, out.stdout
    for base, rc in (
        (home / ".local/share/krita", home / ".config/kritarc"),
        (home / ".var/app/org.kde.krita/data/krita", home / ".var/app/org.kde.krita/config/kritarc"),
    ):
        assert (base / "pykrita/ace_bridge/__init__.py").is_file() and (base / "pykrita/ace_bridge.desktop").is_file()
        assert "enable_ace_bridge=true" in rc.read_text()


def _kritas_importer() -> Path | None:
    """plugin_importer.py as a Krita install ships it (host or an editor-test chroot)."""
    rel = "usr/share/krita/pykrita/plugin_importer/plugin_importer.py"
    for base in (
        "/",
        "/var/cache/ace-bridge/sid",
        "/var/cache/ace-bridge/sid-experimental",
        "/var/cache/ace-bridge/trixie",
    ):
        if (Path(base) / rel).is_file():
            return Path(base) / rel
    return None


def test_krita_zip_passes_kritas_own_importer(tmp_path, monkeypatch):
    """The zip of `ace-bridge package krita` through Krita's PluginImporter (its own code, outside Krita: only
    its `i18n` builtin is stood in): one plugin found, package, .desktop and .action extracted. The real editor
    test (tests/editors/test_krita_import.py) drives the same importer inside Krita 5.3 and 6.0."""
    import builtins
    import importlib.util
    import zipfile

    import bridge_server.install.krita as krita_install
    import bridge_server.install.vendor as vendor

    source = _kritas_importer()
    if source is None:
        pytest.skip("no Krita plugin_importer on this machine (host or /var/cache/ace-bridge chroots)")
    monkeypatch.setattr(vendor, "vendor_libraries", lambda target: (target / "msgpack").mkdir())
    monkeypatch.setattr(vendor, "verify_vendored", lambda target: None)
    out = krita_install.package_krita(tmp_path / "ace_bridge.zip")
    names = zipfile.ZipFile(out).namelist()
    assert "ace_bridge/" in names and "ace_bridge/_vendor/" in names and "ace_bridge/_vendor/msgpack/" in names
    monkeypatch.setattr(builtins, "i18n", lambda text: text, raising=False)
    spec = importlib.util.spec_from_file_location("krita_plugin_importer", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    resources = tmp_path / "resources"
    resources.mkdir()
    imported = module.PluginImporter(str(out), str(resources), lambda plugin: True).import_all()
    assert [p["name"] for p in imported] == ["ace_bridge"]
    assert (resources / "pykrita/ace_bridge/__init__.py").is_file()
    assert (resources / "pykrita/ace_bridge/_vendor/ace_protocol/client.py").is_file()
    assert (resources / "pykrita/ace_bridge.desktop").is_file() and (resources / "actions/ace_bridge.action").is_file()
    # Same sources, same bytes.
    again = krita_install.package_krita(tmp_path / "again.zip")
    assert again.read_bytes() == out.read_bytes()
