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
    return subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


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
    run = ace(
        dict(os.environ),
        "edit",
        "--task",
        "inpaint",
        "--prompt",
        "more sky",
        "--image",
        str(image_path),
        "--expand",
        "0,16,32,0",
        "--dry-run",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["output"] == {"width": 128, "height": 80} and plan["canvas"] == {"width": 128, "height": 80}
    assert plan["expand"] == {"margins": "0,16,32,0", "canvas": {"width": 128, "height": 80}}
    mask = np.asarray(Image.open(out / "mask.png"))
    assert mask.shape == (80, 128)
    assert mask[:16].all() and mask[:, 96:].all() and not mask[40:, :60].any()
    bad = ace(
        dict(os.environ),
        "edit",
        "--task",
        "instruct",
        "--image",
        str(image_path),
        "--expand",
        "8",
        "--dry-run",
        str(out),
    )
    assert bad.returncode == 2 and "cannot expand" in bad.stderr
    bad = ace(
        dict(os.environ),
        "edit",
        "--task",
        "inpaint",
        "--image",
        str(image_path),
        "--expand",
        "8,8",
        "--dry-run",
        str(out),
    )
    assert bad.returncode == 2 and "L,T,R,B" in bad.stderr and "Traceback" not in bad.stderr


def test_expand_writes_the_grown_picture_with_the_old_canvas_kept(demo_daemon, tmp_path):
    image_path, _ = write_inputs(tmp_path)
    image = np.asarray(Image.open(image_path).convert("RGBA"))
    out = tmp_path / "grown.png"
    run = ace(
        demo_daemon.env,
        "edit",
        "--task",
        "inpaint",
        "--prompt",
        "more sky",
        "--image",
        str(image_path),
        "--expand",
        "0,0,32,16",
        "--steps",
        "2",
        "--seed",
        "3",
        "-o",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    grown = np.asarray(Image.open(out).convert("RGBA"))
    assert grown.shape == (80, 128, 4)
    # Away from the seam, the old canvas is untouched.
    assert (grown[:40, :70] == image[:40, :70]).all()


def _one_line_usage_error(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr and all(w in lines[0] for w in words), lines[0]


def test_usage_mistakes_exit_2_with_one_line_before_any_job_is_sent(tmp_path):
    # No daemon runs here: each mistake must be caught locally (a sent job would exit 3, daemon unreachable).
    env = dict(os.environ, ACE_BRIDGE_URL="ws://127.0.0.1:9/v1/ws")
    image_path, mask_path = write_inputs(tmp_path)
    out = str(tmp_path / "out.png")
    base = ["edit", "--image", str(image_path), "--mask", str(mask_path), "-o", out]
    _one_line_usage_error(ace(env, *base, "--task", "local_edit", "--mode", "sideways"), "--mode", "sideways")
    _one_line_usage_error(ace(env, *base, "--task", "inpaint", "--steps", "0"), "steps", "at least 1")
    _one_line_usage_error(ace(env, *base, "--task", "inpaint", "--param", "stepz=3"), "stepz")
    _one_line_usage_error(ace(env, *base, "--task", "inpaint", "--mode", "canny"), "mode")
    _one_line_usage_error(
        ace(
            env,
            "edit",
            "--task",
            "inpaint",
            "--image",
            str(tmp_path / "missing.png"),
            "--mask",
            str(mask_path),
            "-o",
            out,
        ),
        "cannot read",
        "missing.png",
    )
    _one_line_usage_error(ace(env, "edit", "--task", "nope", "-o", out), "unknown task")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    _one_line_usage_error(
        ace(env, *base[:-2], "--task", "inpaint", "-o", str(blocker / "out.png")), "cannot write", "not a folder"
    )
    _one_line_usage_error(ace(env, *base[:-2], "--task", "inpaint", "-o", str(tmp_path)), "is a folder")
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(black)
    _one_line_usage_error(
        ace(env, "edit", "--task", "inpaint", "--image", str(image_path), "--mask", str(black), "-o", out), "all black"
    )
    _one_line_usage_error(ace(env, "edit", "--task", "inpaint", "-o", out), "needs an image")


def test_edit_help_lists_the_tasks_and_every_option_has_help(tmp_path):
    from ace_protocol.tasks import TASKS

    from bridge_server.cli.main import build_parser

    run = ace(dict(os.environ), "edit", "--help")
    assert run.returncode == 0
    for name in TASKS:
        assert f"  {name} " in run.stdout, name
    edit = build_parser()._subparsers._group_actions[0].choices["edit"]  # type: ignore[union-attr]
    missing = [a.option_strings for a in edit._actions if not a.help]
    assert not missing, f"options without help: {missing}"


def test_no_traceback_reaches_a_user(tmp_path):
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
    )
    pull = ace(env, "models", "pull", "--yes", "--root", str(tmp_path / "models"), timeout=180)
    assert pull.returncode != 0 and "Traceback" not in pull.stderr and pull.stderr.strip(), pull.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for editor in ("krita", "gimp"):
        install = ace(env, "install", editor, "--profile-dir", str(blocker / "profile"))
        assert install.returncode == 2 and "Traceback" not in install.stderr, install.stderr
        assert "cannot" in install.stderr and len(install.stderr.strip().splitlines()) == 1
        gone = ace(env, "uninstall", editor, "--profile-dir", str(tmp_path / f"empty-{editor}"))
        assert gone.returncode == 0 and "not installed" in gone.stdout, gone.stdout + gone.stderr
