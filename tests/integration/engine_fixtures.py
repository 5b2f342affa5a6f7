"""Shared fixtures for the engine tests: the tiny model is built once per test session (fast, deterministic)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

_BUILT: dict[str, Path] = {}


def _build(tmp_path_factory: pytest.TempPathFactory, full: bool) -> Path:
    key = "full" if full else "base"
    if key not in _BUILT:
        from bridge_server.engine.tiny import build_tiny_model

        _BUILT[key] = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{key}"), full=full)
    return _BUILT[key]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model root with the base folder, the three ACE++ LoRAs and the FFT file."""
    return _build(tmp_path_factory, True)


@pytest.fixture(scope="session")
def tiny_base_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model root with the base folder only (no LoRAs, no FFT)."""
    return _build(tmp_path_factory, False)


def rgba(w: int, h: int, seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img[..., 3] = 255
    return img
