"""Real daemons for tests: in a background thread (with a step gate, for deterministic mid-job tests) or as an
`ace-bridge serve --demo` subprocess (for CLI and editor tests). Both listen on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight ACE++ model set, built once per test session."""
    from bridge_server.engine.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(root)
    return root


def tiny_engine_factory(root: Path, **kwargs: Any) -> Callable[[], Any]:
    def factory():
        from bridge_server.engine.ace_plus import AcePlusEngine

        return AcePlusEngine(root, idle_unload_s=None, t5_max_length=32, **kwargs)

    return factory


@dataclass
class ThreadDaemon:
    """A daemon app served from a background thread's event loop."""

    config: Any
    url: str = ""
    port: int = 0
    token: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: Any = None
    app: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self):
        from bridge_server.server.state import STATE

        return self.app[STATE]

    def start(self) -> ThreadDaemon:
        from aiohttp import web

        from bridge_server.server.app import BridgeRunner, create_app

        ready = threading.Event()
        errors: list[BaseException] = []
        self.port = self.config.port or free_port()
        self.config.port = self.port

        async def boot() -> None:
            self.app = create_app(self.config)
            self._runner = BridgeRunner(self.app, handle_signals=False, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(boot())
            except BaseException as exc:  # surface start-up errors in the test thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="test-daemon", daemon=True)
        self._thread.start()
        ready.wait(60)
        if errors:
            raise errors[0]
        self.url = f"ws://127.0.0.1:{self.port}/v1/ws"
        self.token = self.state.current_token()
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the daemon's loop and return its result (for inspecting state without races)."""
        assert self._loop is not None
        future: Any = asyncio.run_coroutine_threadsafe(_as_coro(fn), self._loop)
        return future.result(30)

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(30)
        self._loop = None


async def _as_coro(fn: Callable[[], Any]) -> Any:
    result = fn()
    if asyncio.iscoroutine(result):
        result = await result
    return result


def make_config(tmp: Path, engine_factory: Callable[[], Any], **overrides: Any):
    from bridge_server.config import ServerConfig

    return ServerConfig(
        config_dir=tmp / "config",
        data_dir=tmp / "data",
        port=0,
        engine_factory=engine_factory,
        **{"idle_unload_s": None, **overrides},  # tests unload the engine only when they ask for it
    )


@pytest.fixture
def thread_daemon_factory(tmp_path: Path, tiny_model_root: Path) -> Iterator[Callable[..., ThreadDaemon]]:
    """Start in-process daemons: `factory(gate=Gate(...), data_dir=...)`; all are stopped after the test."""
    started: list[ThreadDaemon] = []

    def factory(*, tmp: Path | None = None, engine_factory: Callable[[], Any] | None = None, **overrides: Any):
        config = make_config(tmp or tmp_path, engine_factory or tiny_engine_factory(tiny_model_root), **overrides)
        daemon = ThreadDaemon(config).start()
        started.append(daemon)
        return daemon

    yield factory
    for daemon in started:
        daemon.stop()


@dataclass
class ProcessDaemon:
    """`ace-bridge serve --demo` in a subprocess with its own HOME / config / data folders."""

    process: subprocess.Popen
    url: str
    port: int
    token: str
    config_dir: Path
    data_dir: Path
    env: dict[str, str]
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def isolated_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local/state"),
        ACE_BRIDGE_CONFIG_DIR=str(home / ".config/ace-bridge"),
        ACE_BRIDGE_DATA_DIR=str(home / ".local/share/ace-bridge"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("ACE_BRIDGE_URL", None)
    env.pop("ACE_BRIDGE_TOKEN", None)
    return env


def start_process_daemon(
    home: Path, *extra_args: str, tiny_root: Path | None = None, timeout: float = 90
) -> ProcessDaemon:
    env = isolated_env(home)
    data_dir = Path(env["ACE_BRIDGE_DATA_DIR"])
    if tiny_root is not None:  # reuse the session's tiny model instead of building one per daemon
        data_dir.mkdir(parents=True, exist_ok=True)
        link = data_dir / "demo-model"
        if not link.exists():
            link.symlink_to(tiny_root, target_is_directory=True)
    config_dir = Path(env["ACE_BRIDGE_CONFIG_DIR"])
    runtime = config_dir / "runtime.json"
    runtime.unlink(missing_ok=True)
    log_path = home / "daemon.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridge_server.cli",
            "serve",
            "--demo",
            "--port",
            "0",
            "--idle-unload",
            "3600",
            *extra_args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(REPO),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            info = json.loads(runtime.read_text())
            if info.get("pid") == process.pid:
                token = (config_dir / "token").read_text().strip()
                return ProcessDaemon(process, info["url"], info["port"], token, config_dir, data_dir, env, log_path)
        except (OSError, ValueError):
            pass
        time.sleep(0.05)  # polling a file the daemon writes once; not a test sleep
    process.kill()
    raise RuntimeError(f"daemon did not start within {timeout}s:\n{log_path.read_text(errors='replace')}")


@pytest.fixture
def demo_daemon(tmp_path: Path, tiny_model_root: Path) -> Iterator[ProcessDaemon]:
    """A real `ace-bridge serve --demo` on a free loopback port; `.url`, `.token`, `.port`, `.config_dir`, `.env`."""
    daemon = start_process_daemon(tmp_path / "home", tiny_root=tiny_model_root)
    yield daemon
    daemon.stop()
