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
    folder = config_dir()
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
