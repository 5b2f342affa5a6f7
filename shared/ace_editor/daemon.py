"""First run from inside an editor: find `ace-bridge`, start `ace-bridge serve` detached, wait for its health
route, and say what the daemon's model status means for the painter. No Qt, no GIMP: the Krita docker and the
GIMP dialog only show what these functions return.

- Where `ace-bridge` lives: `ace-bridge install` writes `ace-bridge-launcher.json` beside the plug-in (the
  command that ran the installer, see `write_launcher_record`); a plug-in imported from a zip has none and looks
  at env ACE_BRIDGE_COMMAND, PATH, then the usual per-user script folders (`find_command`). Inside a Flatpak the
  command runs on the host through `flatpak-spawn --host` (needs the sandbox permission
  `--talk-name=org.freedesktop.Flatpak`; docs/install.md says how to grant it).
- `start_daemon` starts `serve` in its own session (it outlives the editor), its output in a log file, and
  `wait_for_health` polls `GET /v1/health` until it answers, the process exits, or time runs out; on failure the
  result carries the log's last lines.
- `is_remote(url)`: only a daemon on another machine needs the URL/token box.
- `advice(model_state)`: the text and buttons for a `model_state` message (what is missing, its size and licence
  step; download progress; no usable GPU and the demo model).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHER_FILE = "ace-bridge-launcher.json"
LOG_FILE = "serve.log"
HEALTH_PATH = "/v1/health"
DEFAULT_START_TIMEOUT_S = 120.0
FLATPAK_INFO = "/.flatpak-info"


# ------------------------------------------------------------------ where ace-bridge lives


def write_launcher_record(folder: str | os.PathLike[str], command: Sequence[str], version: str = "") -> Path:
    """Record beside the plug-in how to run `ace-bridge` (an absolute command, e.g. [".../bin/ace-bridge"] or
    [python, "-m", "bridge_server.cli"]). Written by the installer; read by `find_command`."""
    path = Path(folder) / LAUNCHER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"command": [str(c) for c in command], "version": version}, indent=1) + "\n", encoding="utf-8"
    )
    return path


def read_launcher_record(folder: str | os.PathLike[str]) -> list[str] | None:
    """The recorded command, or None when there is no record, it is unreadable or its program is gone."""
    try:
        data = json.loads((Path(folder) / LAUNCHER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    command = data.get("command") if isinstance(data, dict) else None
    if not (isinstance(command, list) and command and all(isinstance(c, str) and c for c in command)):
        return None
    if not (os.path.isabs(command[0]) and os.path.exists(command[0])) and not in_flatpak():
        return None  # moved or uninstalled; inside a Flatpak the host's path cannot be checked from here
    return command


def in_flatpak(env: Mapping[str, str] | None = None) -> bool:
    """Whether this editor runs inside a Flatpak sandbox."""
    env = os.environ if env is None else env
    return bool(env.get("FLATPAK_ID")) or os.path.exists(FLATPAK_INFO)


def script_folders(
    platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[Path]:
    """Per-user folders where `pip install --user` / pipx put the `ace-bridge` script, most likely first."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or Path.home()
    if platform == "win32":
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        found = [home / ".local" / "bin", local / "pipx" / "pipx" / "venvs" / "ace-bridge" / "Scripts"]
        for base in (appdata / "Python", local / "Programs" / "Python"):
            try:
                found += sorted((p / "Scripts" for p in base.iterdir() if p.is_dir()), reverse=True)
            except OSError:
                continue
        return found
    found = [home / ".local" / "bin", home / ".local" / "pipx" / "venvs" / "ace-bridge" / "bin"]
    if platform == "darwin":
        try:
            found += sorted((p / "bin" for p in (home / "Library" / "Python").iterdir() if p.is_dir()), reverse=True)
        except OSError:
            pass
        found += [Path("/opt/homebrew/bin"), Path("/usr/local/bin")]
    return found


def find_command(
    plugin_dir: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    platform: str | None = None,
    home: Path | None = None,
) -> list[str] | None:
    """How to run `ace-bridge` from this editor, first match wins: the installer's record beside the plug-in, env
    ACE_BRIDGE_COMMAND (a path), `ace-bridge` on PATH, the per-user script folders. None when nowhere."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if plugin_dir is not None:
        recorded = read_launcher_record(plugin_dir)
        if recorded:
            return recorded
    explicit = env.get("ACE_BRIDGE_COMMAND")
    if explicit:
        return [explicit]
    name = "ace-bridge.exe" if platform == "win32" else "ace-bridge"
    on_path = which("ace-bridge")
    if on_path:
        return [on_path]
    for folder in script_folders(platform, env, home):
        candidate = folder / name
        if candidate.is_file():
            return [str(candidate)]
    return None


def host_command(command: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The command as this process must run it: through `flatpak-spawn --host` inside a Flatpak sandbox."""
    if in_flatpak(env):
        return ["flatpak-spawn", "--host", *command]
    return list(command)


# ------------------------------------------------------------------ the endpoint


def _host_port(url: str) -> tuple[str, int | None]:
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname or "", parsed.port


def is_remote(url: str) -> bool:
    """A daemon on another machine (the URL's host is not loopback/localhost): only then does the editor show
    the URL and token box."""
    host, _ = _host_port(url)
    if host in ("", "localhost") or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def health_url(url: str) -> str:
    """`ws://host:port/v1/ws` -> `http://host:port/v1/health` (wss -> https)."""
    parsed = urllib.parse.urlparse(url)
    scheme = "https" if parsed.scheme in ("wss", "https") else "http"
    return urllib.parse.urlunparse((scheme, parsed.netloc, HEALTH_PATH, "", "", ""))


def serve_arguments(url: str) -> list[str]:
    """`serve` arguments that make a daemon listen where `url` points (a loopback URL only)."""
    _, port = _host_port(url)
    return ["serve", "--port", str(port)] if port else ["serve"]


def check_health(url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """The daemon's `/v1/health` JSON, or None when nothing answers there. No proxy: it is our own daemon."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(health_url(url), timeout=timeout) as reply:
            data = json.loads(reply.read(65536).decode("utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) and data.get("ok") else None


# ------------------------------------------------------------------ starting the daemon


def log_tail(path: str | os.PathLike[str], lines: int = 25, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_daemon(
    command: Sequence[str],
    log_path: str | os.PathLike[str],
    arguments: Sequence[str] = ("serve",),
    *,
    env: Mapping[str, str] | None = None,
    popen: Callable[..., Any] = subprocess.Popen,
) -> Any:
    """Start `command + arguments` detached from the editor (its own session / process group, no console), its
    stdout and stderr appended to `log_path`. Returns the Popen object."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = host_command([*command, *arguments], env)
    kwargs: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stderr": subprocess.STDOUT,
        "close_fds": True,
        "env": dict(os.environ if env is None else env),
    }
    if sys.platform == "win32":
        kwargs["creationflags"] = (
            getattr(subprocess, "DETACHED_PROCESS", 0x8)
            | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200)
            | getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)
        )
    else:
        kwargs["start_new_session"] = True
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by the editor: {' '.join(argv)}\n".encode())
        log.flush()
        return popen(argv, stdout=log, **kwargs)


@dataclass
class StartResult:
    ok: bool
    message: str
    log: str = ""  # the log's last lines when it failed
    health: dict[str, Any] = field(default_factory=dict)


def wait_for_health(
    url: str,
    process: Any = None,
    *,
    timeout: float = DEFAULT_START_TIMEOUT_S,
    log_path: str | os.PathLike[str] | None = None,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[[str], dict[str, Any] | None] = check_health,
    should_stop: Callable[[], bool] = lambda: False,
) -> StartResult:
    """Poll the health route until it answers (ok), the started process exits, time runs out or `should_stop`."""
    deadline = clock() + timeout
    while True:
        health = probe(url)
        if health is not None:
            return StartResult(
                True, f"ACE Bridge {health.get('version', '')} is running.".replace("  ", " "), health=health
            )
        code = process.poll() if process is not None else None
        if code is not None:
            return StartResult(
                False,
                f"ace-bridge serve stopped (exit code {code}) before it answered.",
                log_tail(log_path) if log_path else "",
            )
        if should_stop():
            return StartResult(False, "Stopped waiting for ACE Bridge.", log_tail(log_path) if log_path else "")
        if clock() >= deadline:
            return StartResult(
                False, f"ACE Bridge did not answer within {timeout:.0f} s.", log_tail(log_path) if log_path else ""
            )
        sleep(interval)


def start_and_wait(
    url: str,
    plugin_dir: str | os.PathLike[str] | None,
    log_path: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_START_TIMEOUT_S,
    should_stop: Callable[[], bool] = lambda: False,
    popen: Callable[..., Any] = subprocess.Popen,
    find: Callable[..., list[str] | None] = find_command,
) -> StartResult:
    """The "Start ACE Bridge" button: find the command, start `serve` for `url` (loopback), wait for health."""
    if is_remote(url):
        return StartResult(False, f"{url} is on another machine: start ACE Bridge there.")
    if check_health(url) is not None:
        return StartResult(True, "ACE Bridge is already running.")
    command = find(plugin_dir)
    if not command:
        return StartResult(False, NOT_FOUND_TEXT)
    try:
        process = start_daemon(command, log_path, serve_arguments(url), popen=popen)
    except OSError as exc:
        return StartResult(False, f"Could not run {command[0]}: {exc.strerror or exc}.", log_tail(log_path))
    return wait_for_health(url, process, timeout=timeout, log_path=log_path, should_stop=should_stop)


NOT_FOUND_TEXT = (
    "The ace-bridge program was not found. Install it (`pipx install ace-bridge` or `pip install ace-bridge`), "
    "then run `ace-bridge install krita` or `ace-bridge install gimp` once, or set ACE_BRIDGE_COMMAND to its path."
)


# ------------------------------------------------------------------ what the model status means


@dataclass
class Advice:
    """What the editor shows about the model: a headline, details, and which buttons make sense."""

    state: str  # ready | missing | downloading | loading | failed | no_gpu
    title: str
    detail: str = ""
    can_download: bool = False
    can_cancel: bool = False
    fraction: float | None = None  # download progress 0..1, None = unknown
    warning: str = ""  # e.g. no usable GPU

    @property
    def busy(self) -> bool:
        """Something is under way (a download, the model going into memory): show a progress bar, keep polling."""
        return self.state in ("downloading", "loading")


NO_GPU_TEXT = (
    "This machine has no usable NVIDIA GPU, and the ACE++ model needs one (24 GB+ with offload). The daemon runs, "
    "but real jobs will fail here. To try everything without a GPU, use the demo model: `ace-bridge serve --demo` "
    "(tiny random weights, instant, meaningless pictures)."
)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def advice(model_state: Mapping[str, Any]) -> Advice:
    """The editor's text for a `model_state` message (see ace_protocol.messages.ModelState)."""
    pull = model_state.get("pull") or {}
    gpu = model_state.get("gpu") or {}
    tiny = bool(model_state.get("tiny"))
    warning = "" if tiny or gpu.get("usable", True) else NO_GPU_TEXT
    pull_state = pull.get("state", "idle")
    if pull_state == "running":
        done, total = int(pull.get("done_bytes") or 0), int(pull.get("total_bytes") or 0)
        fraction = min(1.0, done / total) if total else None
        where = f" {pull.get('file')}" if pull.get("file") else ""
        amount = f"{_gb(done)} of {_gb(total)}" if total else "starting"
        return Advice(
            "downloading",
            "Downloading the model…",
            f"{amount}{where}",
            can_cancel=True,
            fraction=fraction,
            warning=warning,
        )
    if model_state.get("installed"):
        if warning:
            return Advice("no_gpu", "No usable GPU", warning, warning=warning)
        loading = load_advice(model_state.get("load") or {})
        return loading or Advice("ready", "The model is installed.")
    missing = [m for m in model_state.get("missing") or [] if isinstance(m, dict)]
    needed = [m for m in missing if m.get("required", True)]
    lines = [f"• {m.get('name', '?')}" + (f" ({_gb(float(m['bytes']))})" if m.get("bytes") else "") for m in needed]
    size = float(model_state.get("download_bytes") or sum(float(m.get("bytes") or 0) for m in needed))
    detail = ("Needed: about " + _gb(size) + " to download.\n" if size else "Needed:\n") + "\n".join(lines)
    licence = str(model_state.get("licence") or "")
    if licence:
        detail += "\n\n" + licence
    if pull_state in ("failed", "cancelled"):
        reason = str(pull.get("message") or pull_state)
        detail = f"The last download {pull_state}: {reason}\nDownload again to resume it.\n\n" + detail
    title = "The ACE++ model is not installed."
    return Advice(
        "failed" if pull_state == "failed" else "missing",
        title,
        detail,
        can_download=bool(model_state.get("can_pull", True)),
        warning=warning,
    )


def load_advice(load: Mapping[str, Any]) -> Advice | None:
    """The status text while the daemon puts the weights into memory (model_state.load), else None. Jobs sent
    meanwhile wait in the queue and start when it is done."""
    state = str(load.get("state") or "")
    if state not in ("loading", "warming up"):
        return None
    step, steps = int(load.get("step") or 0), int(load.get("steps") or 0)
    stage = str(load.get("stage") or "")
    elapsed = load.get("elapsed_s")
    parts = [f"{stage} ({step} of {steps})" if stage and steps else stage or "starting"]
    if load.get("tier"):
        parts.append(f"tier {load['tier']}")
    if isinstance(elapsed, (int, float)):
        parts.append(f"{elapsed:.0f} s so far")
    title = "Loading the model…" if state == "loading" else "Preparing the model (first start compiles)…"
    # a stage is done when the next begins: step-1 of steps done; a warm-up's steps are whole compiles
    fraction = max(0.0, (step - 1) / steps) if steps else None
    return Advice("loading", title, ", ".join(parts), fraction=fraction)


def keep_polling(model_state: Mapping[str, Any]) -> bool:
    """Whether the editor should ask again soon: a download runs or the model is loading."""
    return advice(model_state).busy or (model_state.get("pull") or {}).get("state") == "running"


# ------------------------------------------------------------------ where, for the editors


def endpoint_url(explicit: str = "") -> str:
    """The daemon URL the plug-in talks to: its own setting, else discovery (ACE_BRIDGE_URL, runtime.json,
    default) -- the URL that "Start ACE Bridge" starts a daemon for."""
    from .protocol import discovery

    return discovery.resolve(explicit or None).url


def default_log_path() -> Path:
    """Where a daemon started from an editor writes its output: `serve.log` in the daemon's config folder."""
    from .protocol import discovery

    return discovery.find_config_dir() / LOG_FILE
