"""`ace-bridge install krita`, `uninstall krita` and `package krita`: the pykrita plugin.

Krita finds Python plugins as `<resources>/pykrita/<name>.desktop` + `<resources>/pykrita/<name>/`, and loads
them when kritarc has `[python] enable_<name>=true`. Shortcuts come from `<resources>/actions/<name>.action`.
The plugin folder gets the private package `_vendor/` with ace_protocol, ace_editor and pure-Python msgpack +
websockets (vendor.py).
Resource folders: Linux `$XDG_DATA_HOME/krita` (default `~/.local/share/krita`), Windows `%APPDATA%\\krita`,
macOS `~/Library/Application Support/krita`; kritarc: Linux `$XDG_CONFIG_HOME/kritarc`, Windows
`%LOCALAPPDATA%\\kritarc`, macOS `~/Library/Preferences/kritarc`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from bridge_server.install import flatpak
from bridge_server.install.sources import plugin_folder, record_launcher
from bridge_server.install.vendor import vendor_into

PLUGIN_NAME = "ace_bridge"
_SKIP = ("__pycache__", "_vendor")


def plugin_source_dir() -> Path:
    """The folder holding ace_bridge/, ace_bridge.desktop and ace_bridge.action (checkout or wheel)."""
    return plugin_folder("plugins_krita", "plugin_krita", f"{PLUGIN_NAME}/__init__.py")


def default_profile_dir() -> Path:
    """Krita's user resource folder on this platform."""
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "krita"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "krita"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "krita"


def flatpak_profile() -> tuple[Path, Path]:
    """The resource folder and kritarc of Flathub's Krita (org.kde.krita), inside its sandbox folder."""
    base = flatpak.app_dir(flatpak.KRITA_ID)
    return base / "data" / "krita", base / "config" / "kritarc"


def default_targets() -> list[tuple[Path, Path]]:
    """(resource folder, kritarc) pairs `ace-bridge install krita` fills: the native Krita's (unless only the
    Flatpak is found) and the Flatpak's when org.kde.krita is installed (Linux)."""
    targets = []
    has_flatpak = sys.platform not in ("win32", "darwin") and flatpak.installed(flatpak.KRITA_ID)
    native = default_profile_dir()
    if not has_flatpak or shutil.which("krita") or native.is_dir():
        targets.append((native, kritarc_path()))
    if has_flatpak:
        targets.append(flatpak_profile())
    return targets


def kritarc_path() -> Path:
    """Krita's settings file, where plugins are enabled (the same for every resource folder)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "kritarc"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "kritarc"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kritarc"


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP or n.endswith((".pyc", ".pyo"))}


def build_plugin_tree(dest: Path) -> Path:
    """Write `dest/pykrita/ace_bridge{,.desktop}` (with `_vendor/`) and `dest/actions/ace_bridge.action`."""
    src = plugin_source_dir()
    pykrita = dest / "pykrita"
    pkg = pykrita / PLUGIN_NAME
    if pkg.exists():
        shutil.rmtree(pkg)
    pykrita.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / PLUGIN_NAME, pkg, ignore=_ignore)
    shutil.copyfile(src / f"{PLUGIN_NAME}.desktop", pykrita / f"{PLUGIN_NAME}.desktop")
    (dest / "actions").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / f"{PLUGIN_NAME}.action", dest / "actions" / f"{PLUGIN_NAME}.action")
    vendor_into(pkg / "_vendor")  # the private package `ace_bridge._vendor`
    record_launcher(pkg)  # where `ace-bridge` lives, for the docker's "Start ACE Bridge"
    return pkg


def set_enabled(kritarc: Path, enabled: bool) -> None:
    """Set `[python] enable_ace_bridge=` in kritarc, keeping every other line as it was."""
    key = f"enable_{PLUGIN_NAME}"
    lines = kritarc.read_text(encoding="utf-8").splitlines() if kritarc.is_file() else []
    out: list[str] = []
    section = None
    done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "python" and not done:
                out.append(f"{key}={'true' if enabled else 'false'}")
                done = True
            section = stripped[1:-1]
        elif section == "python" and stripped.split("=", 1)[0].strip() == key:
            if not done:
                out.append(f"{key}={'true' if enabled else 'false'}")
                done = True
            continue
        out.append(line)
    if not done:
        if section != "python":
            if out and out[-1].strip():
                out.append("")
            out.append("[python]")
        out.append(f"{key}={'true' if enabled else 'false'}")
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    kritarc.write_text("\n".join(out) + "\n", encoding="utf-8")


def install_krita(profile_dir: Path | None = None, kritarc: Path | None = None) -> Path:
    """Install (or update) the plugin into a Krita resource folder and enable it in kritarc (default: Krita's own
    settings file on this platform); returns the plugin folder."""
    root = Path(profile_dir) if profile_dir is not None else default_profile_dir()
    pkg = build_plugin_tree(root)
    set_enabled(Path(kritarc) if kritarc is not None else kritarc_path(), True)
    return pkg


def install_krita_everywhere() -> list[Path]:
    """`ace-bridge install krita` without --profile-dir: every target of `default_targets()`."""
    return [install_krita(profile, rc) for profile, rc in default_targets()]


def uninstall_krita(profile_dir: Path | None = None, kritarc: Path | None = None) -> None:
    """Remove the plugin files and disable it in kritarc (other plugins and settings are kept)."""
    root = Path(profile_dir) if profile_dir is not None else default_profile_dir()
    shutil.rmtree(root / "pykrita" / PLUGIN_NAME, ignore_errors=True)
    for path in (root / "pykrita" / f"{PLUGIN_NAME}.desktop", root / "actions" / f"{PLUGIN_NAME}.action"):
        path.unlink(missing_ok=True)
    rc = Path(kritarc) if kritarc is not None else kritarc_path()
    if rc.is_file():
        set_enabled(rc, False)


def package_krita(out_zip: Path) -> Path:
    """A zip for Krita's Tools > Scripts > Import Python Plugin from File (and from Web): `ace_bridge.desktop`,
    `ace_bridge.action` and the package folder `ace_bridge/` (with `_vendor/`) at the top level.

    Krita's importer (its own Python plugin `plugin_importer`, PluginImporter.get_source_module) finds the package
    by a *directory entry* named `ace_bridge/` with `ace_bridge/__init__.py` inside, so every folder gets its own
    entry here (zipfile writes none by itself). Entries are sorted and dated 1980-01-01: the same sources give the
    same zip."""
    out_zip = Path(out_zip)
    with tempfile.TemporaryDirectory(prefix="ace-bridge-krita-") as tmp:
        tree = Path(tmp)
        build_plugin_tree(tree)
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        partial = out_zip.with_name(out_zip.name + ".partial")
        pykrita = tree / "pykrita"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            _zip_add(zf, f"{PLUGIN_NAME}.desktop", (pykrita / f"{PLUGIN_NAME}.desktop").read_bytes())
            _zip_add(zf, f"{PLUGIN_NAME}.action", (tree / "actions" / f"{PLUGIN_NAME}.action").read_bytes())
            package = pykrita / PLUGIN_NAME
            for path in [package, *sorted(package.rglob("*"))]:
                if "__pycache__" in path.parts:
                    continue
                name = path.relative_to(pykrita).as_posix()
                if path.is_dir():
                    _zip_add(zf, name + "/", None)
                elif path.is_file():
                    _zip_add(zf, name, path.read_bytes())
        partial.replace(out_zip)
    return out_zip


def _zip_add(zf: zipfile.ZipFile, name: str, data: bytes | None) -> None:
    """One entry: a folder (`name` ends with '/', no data) or a file, with fixed date and POSIX modes."""
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    if data is None:
        info.external_attr = (0o40755 << 16) | 0x10  # S_IFDIR | 0755, and the MS-DOS directory flag
        zf.writestr(info, b"")
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, data)
