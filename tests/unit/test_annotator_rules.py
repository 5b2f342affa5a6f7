"""The pre- and post-processing around the contour and depth annotators, pinned against the authors' rules written
out here directly with OpenCV and numpy (scepter's InfoDrawContourAnnotator.forward, MidasDetector.forward with
annotator/utils.py resize_image / resize_image_ori)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from ace_protocol.tasks import TASKS

from bridge_server.engine import recipes
from bridge_server.engine.annotators import rules


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def authors_depth_size(h: int, w: int) -> tuple[int, int, float]:
    """resize_image(img, 1024 if min(h, w) > 1024 else min(h, w)): (W, H, k), Python's round = numpy's (to even)."""
    resolution = 1024 if min(h, w) > 1024 else min(h, w)
    k = resolution / min(h, w)
    return round(w * k / 64.0) * 64, round(h * k / 64.0) * 64, k


@pytest.mark.parametrize(
    ("h", "w", "expected"),
    [
        (48, 80, (64, 64)),  # k = 1: 0.75 and 1.25 round to 1
        (96, 160, (128, 128)),  # 1.5 -> 2 but 2.5 -> 2: numpy rounds half to even
        (777, 1023, (1024, 768)),
        (2000, 3000, (1536, 1024)),  # short side to 1024: 1024 x 1536
        (1030, 1030, (1024, 1024)),
        (1500, 1100, (1024, 1408)),
    ],
)
def test_depth_input_size_is_the_authors_resize_image(h, w, expected):
    assert rules.depth_input_size(h, w) == expected
    aw, ah, _ = authors_depth_size(h, w)
    assert (aw, ah) == expected


def test_depth_input_too_small_for_the_authors_keeps_64_px():
    # The authors round a 20 px side to 0 rows and OpenCV raises; we keep one 64 px step.
    assert rules.depth_input_size(20, 300) == (320, 64)


@pytest.mark.parametrize(("h", "w"), [(48, 80), (130, 97), (1100, 1300)])
def test_depth_input_pixels_are_inter_area_then_127_5(h, w):
    rgb = picture(h, w)
    aw, ah, k = authors_depth_size(h, w)
    assert k <= 1
    resized = cv2.resize(rgb, (aw, ah), interpolation=cv2.INTER_AREA)
    expected = (resized.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]
    got = rules.depth_input(rgb)
    assert got.shape == (1, 3, ah, aw) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= -1.0 and got.max() <= 1.0


@pytest.mark.parametrize(("h", "w"), [(48, 80), (1100, 1300)])
def test_depth_output_is_min_max_truncated_and_resized_back(h, w):
    aw, ah, k = authors_depth_size(h, w)
    depth = np.random.default_rng(3).random((ah, aw)).astype(np.float32) * 7 + 2
    d = depth - depth.min()
    d = d / d.max()
    grey = np.clip(d * 255.0, 0, 255).astype(np.uint8)
    expected = cv2.resize(np.repeat(grey[..., None], 3, 2), (w, h), interpolation=cv2.INTER_AREA)
    got = rules.depth_output(depth, h, w)
    assert got.shape == (h, w, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    # The nearest point is white, the farthest black (before the resize back mixes neighbours).
    full = rules.depth_output(depth, ah, aw)
    assert full[..., 0].max() == 255 and full[..., 0].min() == 0


def test_depth_output_of_a_flat_map_is_black_not_nan():
    assert not rules.depth_output(np.full((64, 64), 3.0, np.float32), 50, 40).any()


def test_contour_input_is_divided_by_255_only():
    rgb = picture(37, 50)
    got = rules.contour_input(rgb)
    assert got.shape == (1, 3, 37, 50)
    np.testing.assert_array_equal(got[0].transpose(1, 2, 0), rgb.astype(np.float32) / 255.0)


def test_contour_output_truncates_and_crops_to_the_image():
    out = np.full((1, 1, 40, 52), 0.999, np.float32)  # 4 * ceil(37 / 4) x 4 * ceil(50 / 4)
    out[0, 0, 0, 0] = 0.5
    got = rules.contour_output(out, 37, 50)
    assert got.shape == (37, 50, 3) and got.dtype == np.uint8
    assert got[1, 1, 0] == 254  # 254.745 truncated, as astype(uint8), not rounded to 255
    assert got[0, 0, 0] == 127  # 127.5 truncated
    assert (got[..., 0] == got[..., 2]).all()


def test_contour_and_depth_are_modes_of_the_task_table():
    local = TASKS["local_edit"].param("mode")
    control = TASKS["fft_control"].param("annotator")
    assert local is not None and {"contour", "depth"} <= set(local.choices or ())
    assert control is not None and {"contour", "depth"} <= set(control.choices or ())
    assert set(recipes.LOCAL_EDIT_MODES) == set(local.choices or ())
    assert set(recipes.FFT_ANNOTATORS) == set(control.choices or ())
