"""How a client finds the daemon and its token, and where the daemon writes them.

Resolution order, first match wins: explicit argument > ACE_BRIDGE_URL / ACE_BRIDGE_TOKEN > runtime.json and
token file in the per-user config folder > the default URL. Computed here without platformdirs, because this
package runs inside editors.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8717
WS_PATH = "/v1/ws"
DEFAULT_URL = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{WS_PATH}"
APP_NAME = "ace-bridge"
RUNTIME_FILE = "runtime.json"
TOKEN_FILE = "token"


def config_dir() -> Path:
    """The per-user config folder: env ACE_BRIDGE_CONFIG_DIR overrides (tests, portable installs)."""
    override = os.environ.get("ACE_BRIDGE_CONFIG_DIR")
    if override:
        return Path(override)
    if sys.platform == "win32":
        base = os.environ.get("APPDATA") or str(Path.home() / "AppData" / "Roaming")
        return Path(base) / APP_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / APP_NAME
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP_NAME


def in_flatpak() -> bool:
    """This process runs inside a Flatpak sandbox (an editor installed from Flathub)."""
    return bool(os.environ.get("FLATPAK_ID")) or os.path.exists("/.flatpak-info")


def config_dirs() -> list[Path]:
    """Where a client looks for runtime.json and the token, in order: `config_dir()`, then, inside a Flatpak
    sandbox (where XDG_CONFIG_HOME points into ~/.var/app/<id>/config), the host's `~/.config/ace-bridge`: HOME is
    the same inside and out, so a daemon started on the host is found there."""
    first = config_dir()
    folders = [first]
    if sys.platform not in ("win32", "darwin") and not os.environ.get("ACE_BRIDGE_CONFIG_DIR") and in_flatpak():
        host = Path.home() / ".config" / APP_NAME
        if host != first:
            folders.append(host)
    return folders


def find_config_dir() -> Path:
    """The first of `config_dirs()` that holds runtime.json or a token file, else `config_dir()`."""
    folders = config_dirs()
    for folder in folders:
        if (folder / RUNTIME_FILE).is_file() or (folder / TOKEN_FILE).is_file():
            return folder
    return folders[0]


def url_for_port(port: int, host: str = DEFAULT_HOST, *, tls: bool = False) -> str:
    return f"{'wss' if tls else 'ws'}://{host}:{port}{WS_PATH}"


def read_runtime(folder: Path | None = None) -> dict[str, Any] | None:
    """runtime.json as written by `ace-bridge serve`, or None when absent or unreadable."""
    path = (folder or config_dir()) / RUNTIME_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_token(folder: Path | None = None) -> str | None:
    try:
        token = ((folder or config_dir()) / TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str | None
    source: str  # where the URL came from, for error messages


def resolve(url: str | None = None, token: str | None = None, port: int | None = None) -> Endpoint:
    """Apply the discovery rules. `port` alone means the default host on that port."""
    folder = find_config_dir()
    source = "argument"
    if not url and port:
        url = url_for_port(port)
    if not url:
        url, source = os.environ.get("ACE_BRIDGE_URL") or None, "ACE_BRIDGE_URL"
    if not url:
        runtime = read_runtime(folder)
        if runtime and isinstance(runtime.get("url"), str):
            url, source = runtime["url"], str(folder / RUNTIME_FILE)
    if not url:
        url, source = DEFAULT_URL, "default"
    if not token:
        token = os.environ.get("ACE_BRIDGE_TOKEN") or read_token(folder)
    return Endpoint(url=url, token=token, source=source)
