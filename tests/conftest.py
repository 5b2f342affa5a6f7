"""Test-wide rules: no test reads or writes the real user config, history, or editor profiles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_fixture import (  # noqa: E402,F401  (fixtures shared by every test folder)
    demo_daemon,
    thread_daemon_factory,
    tiny_model_root,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name, sub in (
        ("XDG_CONFIG_HOME", ".config"),
        ("XDG_DATA_HOME", ".local/share"),
        ("XDG_CACHE_HOME", ".cache"),
        ("XDG_STATE_HOME", ".local/state"),
    ):
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("ACE_BRIDGE_CONFIG_DIR", str(home / ".config/ace-bridge"))
    monkeypatch.setenv("ACE_BRIDGE_DATA_DIR", str(home / ".local/share/ace-bridge"))
    monkeypatch.delenv("ACE_BRIDGE_URL", raising=False)
    monkeypatch.delenv("ACE_BRIDGE_TOKEN", raising=False)
    return home
