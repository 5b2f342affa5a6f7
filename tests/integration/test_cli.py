"""`ace-bridge edit` against `ace-bridge serve --demo`, both as the user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from daemon_fixture import free_port
from integration_helpers import ellipse_mask, gradient_image
from PIL import Image


def ace(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def write_inputs(folder: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    image, mask = gradient_image(96, 64), ellipse_mask(96, 64)
    image_path, mask_path = folder / "in.png", folder / "mask.png"
    Image.fromarray(image).save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path, image, mask


def test_edit_writes_the_input_with_only_the_selection_changed(demo_daemon, tmp_path):
    image_path, mask_path, image, mask = write_inputs(tmp_path)
    out = tmp_path / "out.png"
    run = ace(
        demo_daemon.env,
        "edit",
        "--task",
        "inpaint",
        "--prompt",
        "a red hat",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--steps",
        "2",
        "--seed",
        "9",
        "-o",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    assert "2/2" in run.stderr and str(out) in run.stdout
    result = np.asarray(Image.open(out).convert("RGBA"))
    assert result.shape == image.shape
    assert (result[mask == 0] == image[mask == 0]).all(), "pixels outside the selection must be identical"
    assert (result[mask == 255] != image[mask == 255]).any()

    patch = tmp_path / "patch.png"
    run = ace(
        demo_daemon.env,
        "edit",
        "--task",
        "inpaint",
        "--prompt",
        "a red hat",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--steps",
        "2",
        "--seed",
        "9",
        "--count",
        "2",
        "--patch-only",
        "-o",
        str(patch),
    )
    assert run.returncode == 0, run.stderr
    first = np.asarray(Image.open(tmp_path / "patch-1.png"))
    assert (tmp_path / "patch-2.png").exists() and first.shape == (64, 96, 4)
    assert (first[..., 3][mask == 0] == 0).all()


def test_status_token_and_exit_codes(demo_daemon, tmp_path):
    env = demo_daemon.env
    status = ace(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["engine"]["state"] in ("loaded", "unloaded", "loading")
    assert ace(env, "token").stdout.strip() == demo_daemon.token

    image_path, mask_path, _, _ = write_inputs(tmp_path)
    base = ["edit", "--task", "inpaint", "--image", str(image_path), "--mask", str(mask_path), "--steps", "1"]
    assert ace(env, *base).returncode == 2  # no -o
    assert ace(env, "edit", "--task", "nope", "-o", "x.png").returncode == 2
    assert ace(env, *base, "--token", "wrong", "-o", str(tmp_path / "o.png")).returncode == 4
    assert ace(env, *base, "--port", str(free_port()), "-o", str(tmp_path / "o.png")).returncode == 3
    failed = ace(env, *base, "--steps", "0", "-o", str(tmp_path / "o.png"))
    assert failed.returncode == 2 and "steps" in failed.stderr  # a usage mistake, caught before a job is sent

    rotated = ace(env, "token", "--rotate").stdout.strip()
    assert rotated and rotated != demo_daemon.token
    assert ace(env, *base, "--token", demo_daemon.token, "-o", str(tmp_path / "o.png")).returncode == 4
    assert ace(env, *base, "-o", str(tmp_path / "o.png")).returncode == 0


def test_dry_run_writes_the_recipe_without_a_daemon(tmp_path, isolated_home):
    import os

    image_path, mask_path, _, _ = write_inputs(tmp_path)
    out = tmp_path / "plan"
    run = ace(
        dict(os.environ),
        "edit",
        "--task",
        "local_edit",
        "--prompt",
        "x",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--dry-run",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["task"] == "local_edit" and plan["canvas"] == {"width": 96, "height": 64}
    assert (out / "canvas.png").exists() and (out / "mask.png").exists()


def test_a_second_daemon_on_the_same_config_folder_says_who_serves(demo_daemon):
    run = ace(demo_daemon.env, "serve", "--demo", "--port", "0", timeout=60)
    assert run.returncode == 2
    assert str(demo_daemon.process.pid) in run.stderr and demo_daemon.url in run.stderr


def test_serve_without_weights_explains_how_to_get_them(tmp_path):
    from daemon_fixture import isolated_env

    env = isolated_env(tmp_path)
    env["ACE_BRIDGE_MODELS"] = str(tmp_path / "no-models")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge_server.cli", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                break
        text = "".join(lines)
        assert "ace-bridge models pull" in text and "--demo" in text
    finally:
        proc.terminate()
        proc.wait(30)


def test_nf4_without_bitsandbytes_is_refused_at_start_with_the_install_command(tmp_path):
    import importlib.util

    import pytest

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    from daemon_fixture import isolated_env

    run = ace(isolated_env(tmp_path), "serve", "--demo", "--port", "0", "--quantize", "nf4", timeout=60)
    assert run.returncode == 2 and "ace-bridge[nf4]" in run.stderr


def inverted(rgba: np.ndarray) -> np.ndarray:
    out = rgba.copy()
    out[..., :3] = 255 - out[..., :3]
    return out


def test_dry_run_of_the_fft_tasks_and_the_new_options(tmp_path, isolated_home):
    """--control, --repainting-scale, several --ref, --keep-pixels-rate/--no-keep-pixels reach the recipe."""
    import os

    env = dict(os.environ)
    image_path, mask_path, image, _ = write_inputs(tmp_path)
    control_path, ref_a, ref_b = tmp_path / "control.png", tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(inverted(image)).save(control_path)
    Image.fromarray(gradient_image(48, 64)).save(ref_a)
    Image.fromarray(gradient_image(32, 40)).save(ref_b)

    def plan(*args: str) -> dict:
        out = tmp_path / f"plan{len(list(tmp_path.glob('plan*')))}"
        run = ace(env, "edit", "--prompt", "{image} x", *args, "--dry-run", str(out))
        assert run.returncode == 0, run.stderr
        return json.loads((out / "plan.json").read_text())

    local = plan(
        "--task",
        "local_edit",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--mode",
        "no_preprocess",
        "--control",
        str(control_path),
        "--repainting-scale",
        "0.3",
    )
    assert (local["mode"], local["control"], local["repainting_scale"], local["adapter"]) == (
        "no_preprocess",
        True,
        0.3,
        "local",
    )
    control = plan(
        "--task", "fft_control", "--image", str(image_path), "--mask", str(mask_path), "--control", str(control_path)
    )
    assert (control["transformer"], control["repainting_scale"], control["control"]) == ("fft", 0.0, True)
    # 64-row target: a 64-row reference >= 0.6 * 64 shrinks to int(38.4) = 38 rows (28 columns); 40 rows >= 38.4 too
    # (32 columns -> int(32 * 38 / 40) = 30): 28 + 30 + 96 = 154 columns, floored to 144 by the nearest-exact fit.
    refs = plan(
        "--task",
        "fft_reference",
        "--ref",
        str(ref_a),
        "--ref",
        str(ref_b),
        "--width",
        "96",
        "--height",
        "64",
        "--keep-pixels-rate",
        "0.6",
    )
    assert refs["keep_pixels_rate"] == 0.6 and refs["canvas"] == {"width": 144, "height": 64}
    assert len(refs["references"]) == 2 and refs["references"][1][1] == refs["edit_columns"][0]
    aligned = plan(
        "--task", "fft_reference", "--ref", str(ref_a), "--width", "96", "--height", "64", "--no-keep-pixels"
    )
    assert aligned["keep_pixels_rate"] is None and aligned["references"] == [[0, 48]]
    for name in ("fft_repaint", "fft_super_resolution", "fft_colorize"):
        assert plan("--task", name, "--image", str(image_path), "--mask", str(mask_path))["transformer"] == "fft"

    wrong = ace(
        env,
        "edit",
        "--task",
        "inpaint",
        "--image",
        str(image_path),
        "--control",
        str(control_path),
        "--dry-run",
        str(tmp_path / "x"),
    )
    assert wrong.returncode == 2 and "local_edit, fft_control" in wrong.stderr
    wrong = ace(
        env,
        "edit",
        "--task",
        "local_edit",
        "--image",
        str(image_path),
        "--ref",
        str(ref_a),
        "--dry-run",
        str(tmp_path / "x"),
    )
    assert wrong.returncode == 2 and "--control" in wrong.stderr


def test_edit_runs_an_fft_task_with_a_control_image_and_a_job_with_two_references(demo_daemon, tmp_path):
    image_path, mask_path, image, mask = write_inputs(tmp_path)
    control_path, ref_a, ref_b = tmp_path / "control.png", tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(inverted(image)).save(control_path)
    Image.fromarray(gradient_image(48, 64)).save(ref_a)
    Image.fromarray(gradient_image(32, 40)).save(ref_b)
    out = tmp_path / "out.png"
    run = ace(
        demo_daemon.env,
        "edit",
        "--task",
        "fft_control",
        "--prompt",
        "{image} a robot",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--control",
        str(control_path),
        "--steps",
        "2",
        "-o",
        str(out),
    )
    assert run.returncode == 0, run.stderr
    result = np.asarray(Image.open(out).convert("RGBA"))
    assert result.shape == image.shape and (result[mask == 0] == image[mask == 0]).all()
    run = ace(
        demo_daemon.env,
        "edit",
        "--task",
        "reference_edit",
        "--prompt",
        "the logo on {image}",
        "--image",
        str(image_path),
        "--mask",
        str(mask_path),
        "--ref",
        str(ref_a),
        "--ref",
        str(ref_b),
        "--steps",
        "1",
        "--patch-only",
        "-o",
        str(tmp_path / "two.png"),
    )
    assert run.returncode == 0, run.stderr
    assert np.asarray(Image.open(tmp_path / "two.png")).shape == (64, 96, 4)
