"""`ace-bridge install gimp` and `ace-bridge package gimp`: the GIMP 3 plug-in folder.

GIMP 3 loads `<profile>/plug-ins/<name>/<name>.py` (the folder named like the file, executable on POSIX). The
folder gets the plug-in's modules, and `_vendor/` with the protocol package plus pure-Python msgpack and
websockets (see vendor.py). Profiles: Linux `$XDG_CONFIG_HOME/GIMP/<ver>` (Flatpak under
`~/.var/app/org.gimp.GIMP/config`), Windows `%APPDATA%\\GIMP\\<ver>`, macOS
`~/Library/Application Support/GIMP/<ver>`, for GIMP 3.0 and 3.2.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

import ace_protocol

from bridge_server.install.vendor import vendor_into

PLUGIN_NAME = "ace-bridge"
SUPPORTED_VERSIONS = ("3.2", "3.0")
_SKIP = ("__pycache__", "_vendor")


def plugin_source_dir() -> Path:
    """The plug-in sources in this checkout (plugins_gimp/ace-bridge)."""
    here = Path(__file__).resolve()
    for base in here.parents:
        candidate = base / "plugins_gimp" / PLUGIN_NAME
        if (candidate / f"{PLUGIN_NAME}.py").is_file():
            return candidate
    raise FileNotFoundError(f"plugins_gimp/{PLUGIN_NAME}/{PLUGIN_NAME}.py not found above {here}")


def gimp_config_roots() -> list[Path]:
    """Folders that hold `GIMP/<version>` profiles on this platform, most likely first."""
    home = Path.home()
    if sys.platform == "win32":
        return [Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP"]
    if sys.platform == "darwin":
        return [home / "Library" / "Application Support" / "GIMP"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [xdg / "GIMP", home / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP"]


def default_profile_dir(gimp_version: str | None = None) -> Path:
    """The GIMP profile to install into: the given version, else the newest existing 3.x profile, else 3.0."""
    roots = gimp_config_roots()
    if gimp_version:
        for root in roots:
            if (root / gimp_version).is_dir():
                return root / gimp_version
        return roots[0] / gimp_version
    for version in SUPPORTED_VERSIONS:
        for root in roots:
            if (root / version).is_dir():
                return root / version
    return roots[0] / "3.0"


def _build_plugin_dir(dest: Path) -> Path:
    """Write the complete plug-in folder into `dest` (created; must not exist)."""
    src = plugin_source_dir()
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_SKIP, "*.pyc"))
    vendor = dest / "_vendor"
    shutil.copytree(Path(ace_protocol.__file__).resolve().parent, vendor / "ace_protocol",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    vendor_into(vendor)
    entry = dest / f"{PLUGIN_NAME}.py"
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return dest


def install_gimp(profile_dir: Path | None, *, gimp_version: str | None = None) -> Path:
    """Install the plug-in into `<profile_dir>/plug-ins/ace-bridge` (profile_dir defaults to GIMP 3's profile,
    see `default_profile_dir`). Replaces an earlier install of this plug-in only. Returns the plug-in folder."""
    profile = Path(profile_dir) if profile_dir else default_profile_dir(gimp_version)
    plug_ins = profile / "plug-ins"
    plug_ins.mkdir(parents=True, exist_ok=True)
    target = plug_ins / PLUGIN_NAME
    with tempfile.TemporaryDirectory(prefix=".ace-bridge-", dir=plug_ins) as tmp:
        staged = _build_plugin_dir(Path(tmp) / PLUGIN_NAME)
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def package_gimp(out_zip: Path) -> Path:
    """Build a zip holding `ace-bridge/…` (unpack it into GIMP's plug-ins folder). Returns the zip's path."""
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ace-bridge-pkg-") as tmp:
        root = _build_plugin_dir(Path(tmp) / PLUGIN_NAME)
        partial = out_zip.with_name(out_zip.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(root.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts:
                    continue
                info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{path.relative_to(root).as_posix()}", (1980, 1, 1, 0, 0, 0))
                mode = 0o755 if path.name == f"{PLUGIN_NAME}.py" else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        partial.replace(out_zip)
    return out_zip


def uninstall_gimp(profile_dir: Path | None, *, gimp_version: str | None = None) -> list[Path]:
    """Remove the plug-in folder from the given profile, or from every GIMP 3 profile found. Returns what was
    removed. The profile's ace-bridge-gimp.json (client id, unfetched jobs) stays for a later reinstall."""
    if profile_dir:
        profiles = [Path(profile_dir)]
    elif gimp_version:
        profiles = [default_profile_dir(gimp_version)]
    else:
        profiles = [root / v for root in gimp_config_roots() for v in SUPPORTED_VERSIONS]
    removed = []
    for profile in profiles:
        target = profile / "plug-ins" / PLUGIN_NAME
        if (target / f"{PLUGIN_NAME}.py").is_file():
            shutil.rmtree(target)
            removed.append(target)
    return removed
