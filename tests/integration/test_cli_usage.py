"""Issue 17, story 8, the cases test_cli_painter.py does not cover: inputs that exist but cannot be read as images,
outputs that cannot be written (an image type the library cannot write, a folder that cannot be made, a read-only
file system, also for `install --profile-dir`), each one line with exit 2 before any job is sent; and an output
named .jpg is written (flattened) instead of failing after the job ran."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from integration_helpers import ellipse_mask, gradient_image
from PIL import Image

NO_DAEMON = "ws://127.0.0.1:9/v1/ws"  # a job that got sent would exit 3 (daemon unreachable), not 2


def ace(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_server.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def one_line(run: subprocess.CompletedProcess, *words: str) -> None:
    assert run.returncode == 2, (run.returncode, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert all(w in lines[0] for w in words), lines[0]


def inputs(folder: Path) -> tuple[Path, Path]:
    image, mask = folder / "in.png", folder / "mask.png"
    Image.fromarray(gradient_image(96, 64)).save(image)
    Image.fromarray(ellipse_mask(96, 64)).save(mask)
    return image, mask


@contextlib.contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A real read-only file system (a bind mount remounted ro): also refuses root, unlike a chmod."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_inputs_that_are_not_images_and_outputs_that_cannot_be_written(tmp_path):
    env = dict(os.environ, ACE_BRIDGE_URL=NO_DAEMON)
    image, mask = inputs(tmp_path)
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"this is not a picture")
    small = tmp_path / "small.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(small)
    out = str(tmp_path / "out.png")
    edit = ["edit", "--task", "inpaint"]
    one_line(ace(env, *edit, "--image", str(garbage), "--mask", str(mask), "-o", out), "cannot read image", "notes.png")
    one_line(ace(env, *edit, "--image", str(tmp_path), "--mask", str(mask), "-o", out), "cannot read image")
    one_line(ace(env, *edit, "--image", str(image), "--mask", str(garbage), "-o", out), "cannot read mask")
    one_line(ace(env, *edit, "--image", str(image), "--mask", str(small), "-o", out), "32x32", "96x64")
    local = ["edit", "--task", "local_edit", "--image", str(image), "--mask", str(mask), "--mode", "canny"]
    one_line(ace(env, *local, "--control", str(garbage), "-o", out), "cannot read control image")
    base = [*edit, "--image", str(image), "--mask", str(mask)]
    one_line(ace(env, *base, "-o", str(tmp_path / "out.txt")), "'.txt' is not an image type", ".png")
    one_line(ace(env, *base, "-o", str(tmp_path / "out")), "no image type")
    one_line(ace(env, *base, "-o", "/proc/no-such-folder/out.png"), "cannot write the output")
    one_line(ace(env, *base, "--dry-run", "/proc/no-such-folder"), "cannot write the dry-run folder")


def test_a_read_only_file_system_is_refused_in_one_line(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: a read-only bind mount is needed for this test")
        pytest.skip("a read-only bind mount needs root")
    env = dict(os.environ, ACE_BRIDGE_URL=NO_DAEMON, HOME=str(tmp_path / "home"))
    image, mask = inputs(tmp_path)
    with read_only_folder(tmp_path / "ro") as ro:
        base = ["edit", "--task", "inpaint", "--image", str(image), "--mask", str(mask)]
        one_line(ace(env, *base, "-o", str(ro / "out.png")), "cannot write the output")
        one_line(ace(env, *base, "--dry-run", str(ro / "plan")), "cannot write the dry-run folder")
        for editor in ("krita", "gimp"):
            one_line(ace(env, "install", editor, "--profile-dir", str(ro / "profile")), "cannot", "Read-only")
            gone = ace(env, "uninstall", editor, "--profile-dir", str(ro))
            assert gone.returncode == 0 and "not installed" in gone.stdout, gone.stdout + gone.stderr
        assert not any(ro.iterdir())


def test_a_jpeg_output_is_written_flattened(demo_daemon, tmp_path):
    env = dict(os.environ, ACE_BRIDGE_URL=demo_daemon.url, ACE_BRIDGE_TOKEN=demo_daemon.token)
    image, mask = inputs(tmp_path)
    out = tmp_path / "deep" / "er" / "out.jpg"
    run = ace(
        env, "edit", "--task", "inpaint", "--image", str(image), "--mask", str(mask), "--steps", "2", "-o", str(out)
    )
    assert run.returncode == 0, run.stderr
    with Image.open(out) as written:
        assert written.format == "JPEG" and written.mode == "RGB" and written.size == (96, 64)
