"""`ace-bridge install gimp` and `ace-bridge package gimp`: the GIMP 3 plug-in folder.

GIMP 3 loads `<profile>/plug-ins/<name>/<name>.py` (the folder named like the file, executable on POSIX). The
folder gets the plug-in's modules, and `_vendor/` with the protocol package plus pure-Python msgpack and
websockets (see vendor.py). Profiles: Linux `$XDG_CONFIG_HOME/GIMP/<ver>` (Flatpak under
`~/.var/app/org.gimp.GIMP/config`), Windows `%APPDATA%\\GIMP\\<ver>`, macOS
`~/Library/Application Support/GIMP/<ver>`, for GIMP 3.0 and 3.2 (and later 3.x profiles that exist). Without a
profile folder, `ace-bridge install gimp` installs into every existing 3.x profile, or before GIMP's first start
into the profile of each GIMP 3 installed here (3.2 when none is found): see `default_profile_dirs`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from pathlib import Path

from bridge_server.install import flatpak
from bridge_server.install.sources import plugin_folder, record_launcher
from bridge_server.install.vendor import vendor_into

PLUGIN_NAME = "ace-bridge"
#: Known GIMP 3 versions, newest first; each reads its own profile folder `GIMP/<version>`.
SUPPORTED_VERSIONS = ("3.2", "3.0")
_PROFILE_NAME = re.compile(r"3\.\d+")
_SKIP = ("__pycache__", "_vendor")


def plugin_source_dir() -> Path:
    """The plug-in folder ace-bridge/ (checkout or wheel)."""
    return plugin_folder("plugins_gimp", "plugin_gimp", f"{PLUGIN_NAME}/{PLUGIN_NAME}.py") / PLUGIN_NAME


def gimp_config_roots() -> list[Path]:
    """Folders that hold `GIMP/<version>` profiles on this platform, most likely first."""
    home = Path.home()
    if sys.platform == "win32":
        return [Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming") / "GIMP"]
    if sys.platform == "darwin":
        return [home / "Library" / "Application Support" / "GIMP"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return [xdg / "GIMP", flatpak.app_dir(flatpak.GIMP_ID) / "config" / "GIMP"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def existing_profiles() -> list[Path]:
    """Every GIMP 3.x profile folder that exists (any minor version, e.g. a future 3.4 too), newest version first,
    the most likely root first within a version."""
    found = []
    for rank, root in enumerate(gimp_config_roots()):
        try:
            children = list(root.iterdir())
        except OSError:
            continue
        for child in children:
            if child.is_dir() and _PROFILE_NAME.fullmatch(child.name):
                found.append((tuple(-n for n in _version_key(child.name)), rank, child))
    return [path for *_, path in sorted(found)]


def installed_gimp_versions() -> list[str]:
    """GIMP 3.x versions whose programs (`gimp-3.N`, `gimp-console-3.N`) are on PATH, newest first. Only Linux
    and other POSIX systems name them so; elsewhere this is empty."""
    if sys.platform in ("win32", "darwin"):
        return []
    versions = {v for v in SUPPORTED_VERSIONS if shutil.which(f"gimp-{v}") or shutil.which(f"gimp-console-{v}")}
    return sorted(versions, key=_version_key, reverse=True)


def default_profile_dirs() -> list[Path]:
    """The GIMP profiles `ace-bridge install gimp` installs into: every existing GIMP 3.x profile; before GIMP's
    first start (no profile yet) the profile of each GIMP 3 version installed here, else of the newest known
    version (3.2). GIMP 3.2 reads only its own 3.2 folder; a 3.0 profile reaches it only through 3.2's one-time
    migration on its first start, so an install made before that start must go into 3.2 itself."""
    existing = existing_profiles()
    if existing:
        return existing
    roots = gimp_config_roots()
    native = [roots[0] / v for v in installed_gimp_versions()]
    if len(roots) > 1 and flatpak.installed(flatpak.GIMP_ID):  # Flathub's GIMP, never started: its 3.2 profile
        return [*native, roots[1] / SUPPORTED_VERSIONS[0]]
    return native or [roots[0] / SUPPORTED_VERSIONS[0]]


def default_profile_dir(gimp_version: str | None = None) -> Path:
    """One GIMP profile: the given version's (an existing one, else under the first root), else the first of
    `default_profile_dirs()` (the newest existing 3.x profile, else the newest installed or known version)."""
    roots = gimp_config_roots()
    if gimp_version:
        for root in roots:
            if (root / gimp_version).is_dir():
                return root / gimp_version
        return roots[0] / gimp_version
    return default_profile_dirs()[0]


def _build_plugin_dir(dest: Path) -> Path:
    """Write the complete plug-in folder into `dest` (created; must not exist)."""
    src = plugin_source_dir()
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*_SKIP, "*.pyc"))
    vendor_into(dest / "_vendor")  # the private package `_vendor` of the plug-in's process
    record_launcher(dest)  # where `ace-bridge` lives, for the dialog's "Start ACE Bridge"
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


def install_gimp_everywhere() -> list[Path]:
    """`ace-bridge install gimp` without --profile-dir: install into every profile of `default_profile_dirs()`.
    Returns the plug-in folders."""
    return [install_gimp(profile) for profile in default_profile_dirs()]


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
        profiles = existing_profiles()
    removed = []
    for profile in profiles:
        target = profile / "plug-ins" / PLUGIN_NAME
        if (target / f"{PLUGIN_NAME}.py").is_file():
            shutil.rmtree(target)
            removed.append(target)
    return removed
