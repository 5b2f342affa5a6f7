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


def test_dry_run_plan_shows_the_grown_canvas(tmp_path):
    image_path, _ = write_inputs(tmp_path)  # 96x64
    out = tmp_path / "plan"
    run = ace(dict(os.environ), "edit", "--task", "inpaint", "--prompt", "more sky", "--image", str(image_path),
              "--expand", "0,16,32,0", "--dry-run", str(out))
    assert run.returncode == 0, run.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["output"] == {"width": 128, "height": 80} and plan["canvas"] == {"width": 128, "height": 80}
    assert plan["expand"] == {"margins": "0,16,32,0", "canvas": {"width": 128, "height": 80}}
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (80, 128)
    assert mask[:16].all() and mask[:, 96:].all() and not mask[40:, :60].any()
    bad = ace(dict(os.environ), "edit", "--task", "instruct", "--image", str(image_path), "--expand", "8",
              "--dry-run", str(out))
    assert bad.returncode == 2 and "cannot expand" in bad.stderr
    bad = ace(dict(os.environ), "edit", "--task", "inpaint", "--image", str(image_path), "--expand", "8,8",
              "--dry-run", str(out))
    assert bad.returncode == 2 and "L,T,R,B" in bad.stderr and "Traceback" not in bad.stderr


def test_expand_writes_the_grown_picture_with_the_old_canvas_kept(demo_daemon, tmp_path):
    image_path, _ = write_inputs(tmp_path)
    image = np.asarray(Image.open(image_path).convert("RGBA"))
    out = tmp_path / "grown.png"
    run = ace(demo_daemon.env, "edit", "--task", "inpaint", "--prompt", "more sky", "--image", str(image_path),
              "--expand", "0,0,32,16", "--steps", "2", "--seed", "3", "-o", str(out))
    assert run.returncode == 0, run.stderr
    grown = np.asarray(Image.open(out).convert("RGBA"))
    assert grown.shape == (80, 128, 4)
    # Away from the seam, the old canvas is untouched.
    assert (grown[:40, :70] == image[:40, :70]).all()
