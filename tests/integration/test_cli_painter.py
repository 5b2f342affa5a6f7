"""`ace-bridge edit` for a painter: strength and expand in the dry-run plan, usage mistakes that exit 2 with one
line before any job is sent, and no traceback in any command (issue 17, stories 2, 3 and 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from integration_helpers import ellipse_mask, gradient_image
from PIL import Image


def ace(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge_server.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_inputs(folder: Path) -> tuple[Path, Path]:
    image_path, mask_path = folder / "in.png", folder / "mask.png"
    Image.fromarray(gradient_image(96, 64)).save(image_path)
    Image.fromarray(ellipse_mask(96, 64)).save(mask_path)
    return image_path, mask_path


def test_dry_run_plan_shows_the_strength(tmp_path, isolated_home):
    image_path, mask_path = write_inputs(tmp_path)
    base = ["edit", "--task", "inpaint", "--image", str(image_path), "--mask", str(mask_path), "--prompt", "x"]
    run = ace(dict(os.environ), *base, "--strength", "0.3", "--dry-run", str(tmp_path / "low"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "low" / "plan.json").read_text())["strength"] == 0.3
    run = ace(dict(os.environ), *base, "--dry-run", str(tmp_path / "full"))
    assert json.loads((tmp_path / "full" / "plan.json").read_text())["strength"] == 1.0
    run = ace(dict(os.environ), *base, "--strength", "0.01", "--dry-run", str(tmp_path / "bad"))
    assert run.returncode == 2 and "strength" in run.stderr and "Traceback" not in run.stderr
    help_text = ace(dict(os.environ), "edit", "--help").stdout
    assert "--strength" in help_text
