"""The panel as a companion (issue 17, story 7), in real Chromium: a result's before/after slider, a failed job
with its error and what to do, and a machine where the model cannot run shown as such. Screenshot:
docs/panel-before-after.png (refreshed with PANEL_DOCS_SCREENSHOT=1; always written to artifacts/panel/)."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from ace_protocol.errors import ErrorCode
from PIL import Image
from test_panel_browser import (  # noqa: F401 - fixtures
    ARTIFACTS,
    REPO,
    browser,
    client_for,
    finish,
    inpaint,
    open_panel,
    page,
    wait_thumbnail,
)

from bridge_server.engine.base import EngineError

pytestmark = pytest.mark.panel


def _shot(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(np.int16)


def test_a_result_opens_with_a_before_and_after_slider(thread_daemon_factory, page):  # noqa: F811
    daemon = thread_daemon_factory()
    client = client_for(daemon, "krita-artist", "krita")
    try:
        handle = inpaint(client, "a red hat on the cat", seed=3)
        assert finish(handle)[-1] == "done"
        entry = f"{handle.id}-0"
        before_file = daemon.config.history_dir / f"{entry}.before.png"
        assert before_file.is_file() and stat.S_IMODE(before_file.stat().st_mode) == 0o600

        open_panel(page, daemon)
        wait_thumbnail(page, entry)
        page.click(f".item[data-entry='{entry}'] button.open")
        page.wait_for_selector("#compare:not([hidden])")
        page.wait_for_function(
            "() => ['compare-before', 'compare-after'].every(id => {"
            " const img = document.getElementById(id);"
            " return img.complete && img.naturalWidth > 0; })"
        )
        compare = page.locator("#compare")
        slider = page.locator("#compare-slider")
        slider.fill("100")  # all before: the input as it was
        page.wait_for_selector("#compare[data-split='100']")
        all_before = _shot(compare)
        slider.fill("0")  # all after: the result over the input
        page.wait_for_selector("#compare[data-split='0']")
        all_after = _shot(compare)
        assert all_before.shape == all_after.shape
        height, width = all_before.shape[:2]
        # The edit is inside the ellipse in the middle; the corners are outside the selection and stay as they were.
        centre = (slice(height * 2 // 5, height * 3 // 5), slice(width * 2 // 5, width * 3 // 5))
        corner = (slice(0, height // 10), slice(6, width // 10 + 6))  # right of the divider line at 0 %
        assert np.abs(all_after[centre] - all_before[centre]).mean() > 5
        assert np.abs(all_after[corner] - all_before[corner]).mean() < 3
        slider.fill("50")
        page.wait_for_selector("#compare[data-split='50']")
        half = _shot(compare)
        left, right = slice(0, width // 2 - 4), slice(width // 2 + 4, width)
        assert np.abs(half[:, left] - all_before[:, left]).mean() < 3
        assert np.abs(half[:, right] - all_after[:, right]).mean() < 3
        page.screenshot(path=str(ARTIFACTS / "before_after.png"))
        if os.environ.get("PANEL_DOCS_SCREENSHOT") == "1":
            page.screenshot(path=str(REPO / "docs" / "panel-before-after.png"))

    finally:
        client.close()


def test_a_failed_job_and_a_machine_that_cannot_run_the_model(tmp_path, thread_daemon_factory, tiny_model_root, page):  # noqa: F811
    from bridge_server.engine.ace_plus import AcePlusEngine

    class NoGpuEngine(AcePlusEngine):
        """The tiny engine as a machine without a usable GPU reports itself; its jobs run out of memory."""

        def state(self):
            return super().state() | {
                "state": "error",
                "error_kind": "no_gpu",
                "error": "no CUDA GPU found; the full-size model needs about 34 GB",
            }

        def run(self, job, on_step, is_cancelled, **kwargs):
            raise EngineError(ErrorCode.OUT_OF_MEMORY, "CUDA out of memory while denoising (tried to allocate 2 GiB)")

    daemon = thread_daemon_factory(
        engine_factory=lambda: NoGpuEngine(tiny_model_root, idle_unload_s=None, t5_max_length=32)
    )
    client = client_for(daemon, "gimp-artist", "gimp")
    try:
        open_panel(page, daemon)
        page.wait_for_selector("#engine-badge.error:has-text('cannot run')")
        problem = page.locator("#engine-problem")
        assert problem.is_visible()
        text = problem.text_content()
        assert "cannot run on this machine" in text and "no CUDA GPU" in text and "34 GB" in text
        assert "GPU" in text.split("no CUDA GPU")[-1]  # the advice: what to do about it

        handle = inpaint(client, "a brass lantern", seed=2)
        assert finish(handle)[-1] == "failed"
        row = page.locator(f"#failures li[data-job='{handle.id}']")
        row.wait_for()
        assert page.locator("#failures-card").is_visible()
        shown = row.text_content()
        assert "out_of_memory" in shown and "CUDA out of memory" in shown
        assert "What to do:" in shown and "smaller area" in shown and "a brass lantern" in shown
        page.screenshot(path=str(ARTIFACTS / "cannot_run_and_failed.png"), full_page=True)
    finally:
        client.close()
