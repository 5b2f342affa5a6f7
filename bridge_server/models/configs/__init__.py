"""Small configs shipped with ACE Bridge, so single-file and GGUF weights load offline (diffusers would otherwise
fetch them from the gated black-forest-labs/FLUX.1-Fill-dev repo). The values are FLUX.1-Fill-dev's public
architecture numbers; the ACE++ FFT model is the same with `in_channels=448` (passed at load)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def fill_config_dir() -> Path:
    """A folder with transformer/config.json, vae/config.json and scheduler/scheduler_config.json."""
    return HERE / "flux_fill"
