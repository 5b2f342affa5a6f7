"""Where the daemon keeps its data (journal, history, the demo model): one rule for `serve` and every command."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """ACE_BRIDGE_DATA_DIR if set, else the platform's per-user data folder."""
    env = os.environ.get("ACE_BRIDGE_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("ace-bridge", appauthor=False))
