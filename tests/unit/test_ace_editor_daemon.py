"""ace_editor.daemon: finding `ace-bridge`, starting `serve` detached, waiting for health, and what a
`model_state` means for the painter (issue 15 item 3). No editor, no daemon: fakes and a tiny HTTP server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from ace_editor import daemon


def test_launcher_record_round_trip_and_a_vanished_program(tmp_path, monkeypatch):
    monkeypatch.delenv("FLATPAK_ID", raising=False)
    monkeypatch.setattr(daemon, "FLATPAK_INFO", str(tmp_path / "no-flatpak-info"))
    program = tmp_path / "bin" / "ace-bridge"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    path = daemon.write_launcher_record(tmp_path / "plugin", [str(program)], "1.2.3")
    assert json.loads(path.read_text()) == {"command": [str(program)], "version": "1.2.3"}
    assert daemon.read_launcher_record(tmp_path / "plugin") == [str(program)]
    program.unlink()  # uninstalled or moved: the record is ignored
    assert daemon.read_launcher_record(tmp_path / "plugin") is None
    (tmp_path / "plugin" / daemon.LAUNCHER_FILE).write_text("not json")
    assert daemon.read_launcher_record(tmp_path / "plugin") is None
    assert daemon.read_launcher_record(tmp_path / "nowhere") is None


def test_find_command_order(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon, "FLATPAK_INFO", str(tmp_path / "no-flatpak-info"))
    home = tmp_path / "home"
    local = home / ".local" / "bin" / "ace-bridge"
    local.parent.mkdir(parents=True)
    local.write_text("")
    recorded = tmp_path / "venv" / "bin" / "ace-bridge"
    recorded.parent.mkdir(parents=True)
    recorded.write_text("")
    plugin = tmp_path / "plugin"
    daemon.write_launcher_record(plugin, [str(recorded)])

    def find(which=lambda name: None, env=None, plugin_dir=plugin):
        return daemon.find_command(plugin_dir, env=env or {}, which=which, platform="linux", home=home)

    assert find() == [str(recorded)]  # the installer's record first
    assert find(plugin_dir=None, env={"ACE_BRIDGE_COMMAND": "/opt/x/ace-bridge"}) == ["/opt/x/ace-bridge"]
    assert find(plugin_dir=None, which=lambda name: "/usr/bin/ace-bridge") == ["/usr/bin/ace-bridge"]
    assert find(plugin_dir=None) == [str(local)]  # pip --user / pipx folder
    local.unlink()
    assert find(plugin_dir=None) is None


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("win32", ["appdata/Python/Python313/Scripts", "localappdata/pipx/pipx/venvs/ace-bridge/Scripts"]),
        ("darwin", ["home/Library/Python/3.12/bin", "home/.local/bin"]),
        ("linux", ["home/.local/bin", "home/.local/pipx/venvs/ace-bridge/bin"]),
    ],
)
def test_script_folders_per_platform(tmp_path, platform, expected):
    env = {"APPDATA": str(tmp_path / "appdata"), "LOCALAPPDATA": str(tmp_path / "localappdata")}
    (tmp_path / "appdata/Python/Python313").mkdir(parents=True)
    (tmp_path / "home/Library/Python/3.12").mkdir(parents=True)
    folders = daemon.script_folders(platform, env, tmp_path / "home")
    for rel in expected:
        assert tmp_path / rel in folders, (rel, folders)
    name = "ace-bridge.exe" if platform == "win32" else "ace-bridge"
    target = tmp_path / expected[0] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("")
    assert daemon.find_command(None, env=env, which=lambda n: None, platform=platform, home=tmp_path / "home") == [
        str(target)
    ]


def test_flatpak_runs_the_host_command(monkeypatch):
    assert daemon.host_command(["ace-bridge", "serve"], {"FLATPAK_ID": "org.kde.krita"}) == [
        "flatpak-spawn",
        "--host",
        "ace-bridge",
        "serve",
    ]
    monkeypatch.setattr(daemon, "FLATPAK_INFO", "/nonexistent/.flatpak-info")
    assert daemon.host_command(["ace-bridge"], {}) == ["ace-bridge"]


@pytest.mark.parametrize(
    ("url", "remote"),
    [
        ("ws://127.0.0.1:8717/v1/ws", False),
        ("ws://localhost:9/v1/ws", False),
        ("ws://[::1]:8717/v1/ws", False),
        ("wss://192.168.1.20:8717/v1/ws", True),
        ("wss://gpu-box.lan:8717/v1/ws", True),
    ],
)
def test_connection_box_only_for_a_remote_daemon(url, remote):
    assert daemon.is_remote(url) is remote


def test_health_url_and_serve_arguments():
    assert daemon.health_url("ws://127.0.0.1:9123/v1/ws") == "http://127.0.0.1:9123/v1/health"
    assert daemon.health_url("wss://h:1/v1/ws") == "https://h:1/v1/health"
    assert daemon.serve_arguments("ws://127.0.0.1:9123/v1/ws") == ["serve", "--port", "9123"]
    assert daemon.serve_arguments("ws://127.0.0.1/v1/ws") == ["serve"]


def test_start_daemon_detaches_and_logs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(daemon, "FLATPAK_INFO", "/nonexistent/.flatpak-info")

    def popen(argv, **kwargs):
        calls.append((argv, kwargs))
        return object()

    daemon.start_daemon(
        ["/x/ace-bridge"], tmp_path / "logs" / "serve.log", ["serve", "--port", "1"], env={"HOME": "/h"}, popen=popen
    )
    argv, kwargs = calls[0]
    assert argv == ["/x/ace-bridge", "serve", "--port", "1"]
    assert kwargs["start_new_session"] is True and kwargs["stdin"] == subprocess.DEVNULL
    assert "started by the editor" in (tmp_path / "logs" / "serve.log").read_text()


class _FakeProcess:
    def __init__(self, code=None):
        self.code = code

    def poll(self):
        return self.code


def test_wait_for_health_ok_exit_and_timeout(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("\n".join(f"line {i}" for i in range(40)) + "\nerror: port in use\n")
    now = [0.0]

    def clock():
        return now[0]

    def sleep(s):
        now[0] += s

    answers = iter([None, None, {"ok": True, "version": "9.9"}])
    ok = daemon.wait_for_health(
        "ws://127.0.0.1:1/v1/ws", _FakeProcess(), probe=lambda u: next(answers), clock=clock, sleep=sleep
    )
    assert ok.ok and "9.9" in ok.message
    gone = daemon.wait_for_health(
        "ws://127.0.0.1:1/v1/ws", _FakeProcess(2), probe=lambda u: None, log_path=log, clock=clock, sleep=sleep
    )
    assert not gone.ok and "exit code 2" in gone.message and gone.log.endswith("error: port in use")
    assert "line 10" not in gone.log  # only the tail
    late = daemon.wait_for_health(
        "ws://127.0.0.1:1/v1/ws",
        _FakeProcess(),
        probe=lambda u: None,
        log_path=log,
        timeout=5,
        clock=clock,
        sleep=sleep,
    )
    assert not late.ok and "5 s" in late.message and "port in use" in late.log


def test_start_and_wait_runs_a_real_detached_process(tmp_path, monkeypatch):
    """A stand-in `ace-bridge` (a Python script serving /v1/health) is found through the launcher record,
    started in its own session, and answers; the editor could exit and it would keep running."""
    monkeypatch.setattr(daemon, "FLATPAK_INFO", "/nonexistent/.flatpak-info")
    script = tmp_path / "fake-ace-bridge"
    script.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent("""
        import http.server, json, os, sys
        port = int(sys.argv[sys.argv.index("--port") + 1])
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({"ok": True, "version": "fake", "sid": os.getsid(0)}).encode()
                self.send_response(200); self.end_headers(); self.wfile.write(body)
            def log_message(self, *a): pass
        print("fake daemon on", port, flush=True)
        http.server.HTTPServer(("127.0.0.1", port), H).handle_request()
    """)
    )
    script.chmod(0o755)
    plugin = tmp_path / "plugin"
    daemon.write_launcher_record(plugin, [str(script)])
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = []

    def popen(argv, **kwargs):
        proc = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    result = daemon.start_and_wait(
        f"ws://127.0.0.1:{port}/v1/ws", plugin, tmp_path / "serve.log", timeout=30, popen=popen
    )
    try:
        assert result.ok, (result.message, result.log)
        assert result.health["sid"] != os.getsid(0)  # its own session: it outlives the editor
        assert "fake daemon on" in (tmp_path / "serve.log").read_text()
    finally:
        for proc in started:
            proc.kill()
            proc.wait(10)


def test_start_and_wait_without_a_command_or_for_a_remote_url(tmp_path):
    nothing = daemon.start_and_wait("ws://127.0.0.1:9/v1/ws", None, tmp_path / "l", find=lambda d: None)
    assert not nothing.ok and "pipx install ace-bridge" in nothing.message
    remote = daemon.start_and_wait("wss://10.1.2.3:8717/v1/ws", None, tmp_path / "l")
    assert not remote.ok and "another machine" in remote.message


def _state(**kw):
    base = {
        "installed": False,
        "tiny": False,
        "missing": [
            {"name": "FLUX.1-Fill-dev (base model)", "required": True, "bytes": 35 * 10**9},
            {"name": "ACE_Plus/ace_plus_fft.safetensors (optional, for instruct)", "required": False, "bytes": 0},
        ],
        "download_bytes": 35 * 10**9,
        "licence": "FLUX.1 [dev] Non-Commercial License: accept it first.",
        "can_pull": True,
        "pull": {"state": "idle"},
        "gpu": {"usable": True},
        "tasks": [],
    }
    base.update(kw)
    return base


def test_advice_for_each_model_state():
    missing = daemon.advice(_state())
    assert missing.state == "missing" and missing.can_download and not missing.warning
    assert "35.0 GB" in missing.detail and "Non-Commercial" in missing.detail and "optional" not in missing.detail
    running = daemon.advice(
        _state(
            pull={
                "state": "running",
                "done_bytes": 7 * 10**9,
                "total_bytes": 35 * 10**9,
                "file": "transformer.safetensors",
            }
        )
    )
    assert running.state == "downloading" and running.can_cancel and running.fraction == pytest.approx(0.2)
    assert "7.0 GB of 35.0 GB" in running.detail
    failed = daemon.advice(_state(pull={"state": "failed", "message": "gated: accept the licence"}))
    assert failed.state == "failed" and failed.can_download and "accept the licence" in failed.detail
    cancelled = daemon.advice(_state(pull={"state": "cancelled"}))
    assert cancelled.can_download and "resume" in cancelled.detail
    no_gpu = daemon.advice(_state(installed=True, gpu={"usable": False}))
    assert no_gpu.state == "no_gpu" and "--demo" in no_gpu.detail
    assert daemon.advice(_state(installed=True, tiny=True, gpu={"usable": False})).state == "ready"
    assert "demo model" in daemon.advice(_state(gpu={"usable": False})).warning
    assert not daemon.advice(_state(can_pull=False)).can_download
