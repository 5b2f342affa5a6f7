"""Live progress previews from AcePlusEngine on the tiny model (CPU): when they come, their size, and that they
change nothing about the final image."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob

T5_LEN = 16


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path):
    eng = AcePlusEngine(tiny_model_root, t5_max_length=T5_LEN, idle_unload_s=None)
    yield eng
    eng.close()


def inpaint_job(steps: int, seed: int = 5) -> EngineJob:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (48, 80, 4), dtype=np.uint8)
    image[..., 3] = 255
    mask = np.zeros((48, 80), np.uint8)
    mask[8:40, 16:64] = 255
    return EngineJob(
        task="inpaint", prompt="a red apple on a table", seed=seed, params={"steps": steps}, image=image, mask=mask
    )


@contextmanager
def previews_every(engine: AcePlusEngine, steps: int) -> Iterator[None]:
    """Change the module-wide engine's preview interval for one test, and put the default back."""
    default = engine.preview_every
    engine.preview_every = steps
    try:
        yield
    finally:
        engine.preview_every = default


def run(engine: AcePlusEngine, job: EngineJob, *, previews: bool):
    events: list[tuple] = []

    def on_step(i: int, n: int) -> None:
        events.append(("step", i, n))

    def on_preview(i: int, rgb: np.ndarray) -> None:
        events.append(("preview", i, rgb))

    kwargs = {"on_preview": on_preview} if previews else {}
    result = engine.run(job, on_step, lambda: False, **kwargs)
    return result, events


def test_previews_at_every_nth_step_never_the_last(engine):
    with previews_every(engine, 2):
        result, events = run(engine, inpaint_job(7), previews=True)
    previews = [e for e in events if e[0] == "preview"]
    assert [e[1] for e in previews] == [2, 4, 6]
    for _, step, rgb in previews:
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert max(rgb.shape[:2]) <= 256 and min(rgb.shape[:2]) >= 8
        # The result's part of the canvas: the region's aspect (80x48), within rounding of the 8-px latent grid.
        assert abs(rgb.shape[1] / rgb.shape[0] - 80 / 48) < 0.35
        # Each preview comes right before the progress event of the same step.
        index = next(k for k, e in enumerate(events) if e[0] == "preview" and e[1] == step)
        assert events[index + 1][:2] == ("step", step)
    assert [e[1] for e in events if e[0] == "step"] == list(range(1, 8))
    assert result.rgb.shape == (48, 80, 3)


def test_default_every_four_and_none_on_last_step(engine):
    _, events = run(engine, inpaint_job(8), previews=True)
    assert [e[1] for e in events if e[0] == "preview"] == [4]  # step 8 is the last: no preview there


def test_zero_disables_previews(engine):
    with previews_every(engine, 0):
        _, events = run(engine, inpaint_job(5), previews=True)
    assert not [e for e in events if e[0] == "preview"]


def test_final_image_identical_with_and_without_previews(engine):
    with previews_every(engine, 1):
        with_previews, events = run(engine, inpaint_job(5, seed=11), previews=True)
        without, plain = run(engine, inpaint_job(5, seed=11), previews=False)
    assert len([e for e in events if e[0] == "preview"]) == 4
    assert not [e for e in plain if e[0] == "preview"]
    assert np.array_equal(with_previews.rgb, without.rgb)


def test_reference_columns_are_not_in_the_preview(engine):
    """subject puts the reference left of the edit area on the canvas; the preview shows only the edit part."""
    rng = np.random.default_rng(4)
    reference = rng.integers(0, 256, (48, 48, 4), dtype=np.uint8)
    reference[..., 3] = 255
    job = EngineJob(
        task="subject", prompt="{image} a mug", seed=2, params={"steps": 3}, references=[reference], width=96, height=48
    )
    with previews_every(engine, 1):
        result, events = run(engine, job, previews=True)
    previews = [e[2] for e in events if e[0] == "preview"]
    assert len(previews) == 2 and result.rgb.shape == (48, 96, 3)
    h, w = previews[0].shape[:2]
    assert abs(w / h - 2.0) < 0.35  # 96x48 alone; with the reference columns it would be ~3:1
