"""Editors installed from Flathub: `org.kde.krita` and `org.gimp.GIMP` keep their profiles inside
`~/.var/app/<id>/` (data/krita + config/kritarc for Krita, config/GIMP/<version> for GIMP), not in the host's XDG
folders. An editor counts as installed when `~/.var/app/<id>/` exists (it has run once) or `flatpak info <id>`
succeeds (installed, never started)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

KRITA_ID = "org.kde.krita"
GIMP_ID = "org.gimp.GIMP"


def app_dir(app_id: str) -> Path:
    """The sandbox's per-user folder on the host: `~/.var/app/<id>`."""
    return Path.home() / ".var" / "app" / app_id


def installed(app_id: str) -> bool:
    """The Flatpak app exists for this user: its sandbox folder is there, or `flatpak info` knows it."""
    if app_dir(app_id).is_dir():
        return True
    flatpak = shutil.which("flatpak")
    if not flatpak:
        return False
    try:
        return (
            subprocess.run(
                [flatpak, "info", app_id], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False
