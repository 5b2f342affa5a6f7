"""The structure modes of a local edit show the model what ACE++'s own annotators would have shown it.

The authors' local-edit inputs come from scepter's annotators, which are OpenCV calls (modelscope/scepter,
`scepter/modules/annotator/`): `cv2.Canny(rgb, 100, 200)`, a bicubic shrink by 64 with nearest-neighbour growth back, and
`cv2.COLOR_BGR2GRAY` applied to RGB data; the result is pasted into the image with the soft selection
(`Image.composite`), over an image that is white where the layer has nothing. Every expectation below is computed
here, independently, from OpenCV or plain arithmetic — never from our own code — and compared pixel for pixel.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bridge_server.engine import recipes

# ------------------------------------------------------------------------------------------------------------------
# Pictures a user might paint: straight diagonal strokes, round shapes, texture; odd sizes on purpose.


def diagonal(w: int = 53, h: int = 37, angle: str = "45") -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    inside = xx > yy if angle == "45" else xx + yy > w - 1
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (30, 60, 200)
    img[inside] = (240, 200, 40)
    return img


def circle(w: int = 53, h: int = 37) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2.0, yy - h / 2.0)
    shade = np.clip((12.0 - r) * 128.0 + 128.0, 0, 255)  # a disc with a one-pixel soft rim
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = shade.astype(np.uint8)
    img[..., 1] = (255 - shade).astype(np.uint8) // 2
    img[..., 2] = 90
    return img


def texture(w: int = 53, h: int = 37, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 3 + 2, w // 3 + 2, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(coarse, np.ones((3, 3, 1), np.uint8))[:h, :w]) ^ rng.integers(
        0, 24, (h, w, 3), dtype=np.uint8
    )


PICTURES = {
    "diagonal 45": lambda w, h: diagonal(w, h, "45"),
    "diagonal 135": lambda w, h: diagonal(w, h, "135"),
    "circle": circle,
    "texture": texture,
}
SIZES = [(53, 37), (37, 53), (131, 97), (257, 193)]


def over_white(rgba: np.ndarray) -> np.ndarray:
    """Straight alpha over white, written out: rgb * a + 255 * (1 - a), rounded."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.rint(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8)


def soft_alpha(w: int, h: int) -> np.ndarray:
    """An alpha ramp with fully transparent and fully opaque parts (a painted layer with a soft brush edge)."""
    ramp = np.clip((np.arange(w, dtype=np.float64) - w * 0.2) / (w * 0.6) * 255.0, 0, 255)
    return np.repeat(np.rint(ramp)[None, :], h, axis=0).astype(np.uint8)


def three(channel: np.ndarray) -> np.ndarray:
    return np.repeat(channel[..., None], 3, axis=2)


# ------------------------------------------------------------------------------------------------------------------
# Canny


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PICTURES))
def test_canny_edges_are_exactly_opencvs(name, size):
    """Whatever the user painted, the canny mode gives the model OpenCV's Canny(100, 200) on the RGB pixels."""
    img = PICTURES[name](*size)
    expected = cv2.Canny(img, 100, 200)
    got = recipes.canny(img)
    assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8
    assert np.array_equal(got, three(expected))


@pytest.mark.parametrize("angle", ["45", "135"])
def test_a_diagonal_stroke_keeps_its_edge(angle):
    """A 45° edge must come out as a line of edge pixels (the hand-written Canny kept 4 of about 250)."""
    img = diagonal(128, 128, angle)
    edges = recipes.canny(img)[..., 0] > 0
    assert edges.sum() == (cv2.Canny(img, 100, 200) > 0).sum() > 200


def test_canny_looks_at_the_strongest_colour_channel_not_at_grey():
    """Red against green of the same grey level is an edge for OpenCV's colour Canny, as for the authors."""
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :20] = (150, 0, 0)
    img[:, 20:] = (0, 76, 0)  # about the same luma as the red: a grey conversion would see no edge
    edges = recipes.canny(img)[..., 0]
    assert edges[:, 18:22].any(axis=1).all()
    assert np.array_equal(edges, cv2.Canny(img, 100, 200))


@pytest.mark.parametrize("name", list(PICTURES))
def test_canny_on_a_layer_with_soft_transparency_sees_it_over_white(name):
    """A layer with a soft-edged transparent part: the edges are those of the layer flattened over white."""
    w, h = 53, 37
    rgba = np.dstack([PICTURES[name](w, h), soft_alpha(w, h)])
    mask = np.full((h, w), 255, np.uint8)
    plan = recipes.local_edit("p", rgba, mask, mode="canny")
    expected = three(cv2.Canny(over_white(rgba), 100, 200))
    # Nothing is resized at this size; with a full mask the canvas is the edge map at the repainting scale 0.5.
    assert (plan.width, plan.height) == (48, 32)
    want = recipes.to_signed(expected) * 0.5
    rows = recipes.nearest_exact_index(h, 32)
    cols = recipes.nearest_exact_index(w, 48)
    assert np.array_equal(plan.canvas, want[rows][:, cols])


# ------------------------------------------------------------------------------------------------------------------
# Mosaic


@pytest.mark.parametrize("size", [(131, 97), (257, 193), (1023, 777), (640, 64)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PICTURES))
def test_mosaic_is_opencvs_bicubic_shrink_and_nearest_growth(name, size):
    """The mosaic mode: OpenCV bicubic down to (w // 64, h // 64), no antialiasing, nearest back up."""
    w, h = size
    img = PICTURES[name](w, h)
    small = cv2.resize(img, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
    expected = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(recipes.mosaic(img), expected)


@pytest.mark.parametrize("size", [(53, 37), (37, 53), (200, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_mosaic_of_a_small_selection_is_one_block_wide_instead_of_an_error(size):
    """Below 64 px the authors' size is 0 and OpenCV raises; we shrink to 1 px on that side instead."""
    w, h = size
    img = texture(w, h)
    small = cv2.resize(img, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    expected = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(h, w, 3)
    assert np.array_equal(recipes.mosaic(img), expected)


def test_mosaic_of_a_very_wide_strip_is_made_from_the_whole_strip():
    """The authors annotate the whole image before the 4:1 crop: the blocks follow the full width."""
    img = np.dstack([texture(320, 64), np.full((64, 320), 255, np.uint8)])
    plan = recipes.local_edit("p", img, np.full((64, 320), 255, np.uint8), mode="mosaic")
    assert plan.region_box == (32, 0, 256, 64)
    rgb = img[..., :3]
    full = cv2.resize(
        cv2.resize(rgb, (5, 1), interpolation=cv2.INTER_CUBIC), (320, 64), interpolation=cv2.INTER_NEAREST
    )
    assert np.array_equal(plan.canvas, recipes.to_signed(full[:, 32:288]) * 0.5)


# ------------------------------------------------------------------------------------------------------------------
# Recolor


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PICTURES))
def test_recolor_grey_is_opencvs_bgr_to_grey_on_rgb_data(name, size):
    """The recolor mode shows the model the grey the authors trained with: BGR2GRAY applied to RGB pixels."""
    img = PICTURES[name](*size)
    assert np.array_equal(recipes.recolor(img), three(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)))


def test_recolor_weights_red_and_blue_the_authors_way_round():
    """Pure red comes out dark (0.114) and pure blue lighter (0.299): swapped against the textbook, on purpose."""
    img = np.array([[[255, 0, 0], [0, 0, 255], [0, 255, 0]]], np.uint8)
    grey = recipes.recolor(img)[0, :, 0]
    assert list(grey) == [round(0.114 * 255), round(0.299 * 255), round(0.587 * 255)] == [29, 76, 150]


# ------------------------------------------------------------------------------------------------------------------
# How the structure image and transparency reach the model


@pytest.mark.parametrize("mode", ["canny", "mosaic", "recolor"])
def test_structure_is_blended_in_with_the_soft_selection(mode):
    """A feathered selection: each pixel is structure * m + picture * (1 - m) with the selection's own m,
    rounded as Pillow's composite does; the binarised mask (> 128) only decides where the 0.5 scale applies."""
    w, h = 96, 64
    img = texture(w, h, seed=3)
    soft = np.repeat(np.linspace(0, 255, w).round().astype(np.uint8)[None, :], h, axis=0)
    soft[:8] = 0  # a part outside the selection altogether
    plan = recipes.local_edit("p", np.dstack([img, np.full((h, w), 255, np.uint8)]), soft, mode=mode)
    if mode == "canny":
        structure = three(cv2.Canny(img, 100, 200))
    elif mode == "mosaic":
        small = cv2.resize(img, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC)
        structure = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    else:
        structure = three(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    m = soft[..., None].astype(np.float64)
    blended = np.rint((structure * m + img * (255.0 - m)) / 255.0).astype(np.uint8)
    binary = (soft > 128).astype(np.float32)[..., None]
    assert np.array_equal(plan.mask, binary[..., 0])
    assert np.array_equal(plan.canvas, recipes.to_signed(blended) * (1.0 - binary * 0.5))
    # A half-selected pixel really is half structure: the old hard mask would have left it untouched.
    col = int(np.argmax(soft[10] >= 100))
    assert not np.array_equal(plan.canvas[8:, col], recipes.to_signed(img)[8:, col])
    assert np.array_equal(plan.canvas[:8], recipes.to_signed(img)[:8])


def test_a_transparent_pixel_reaches_the_model_as_white():
    """A hole in the layer is white to the model (as in the authors' RGB files), not mid-grey ("generate")."""
    img = texture(32, 32)
    rgba = np.dstack([img, np.full((32, 32), 255, np.uint8)])
    rgba[0, 1, 3] = 0  # fully transparent
    rgba[0, 2] = (255, 0, 0, 128)  # half-transparent red
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, 16:] = 255
    plan = recipes.inpaint("p", rgba, mask)
    assert np.array_equal(plan.canvas[0, 1], np.ones(3, np.float32))  # white is +1 in [-1, 1]
    assert np.array_equal(recipes.flatten_rgb(rgba)[0, 1], [255, 255, 255])
    assert np.array_equal(recipes.flatten_rgb(rgba)[0, 2], over_white(rgba[0:1, 2:3])[0, 0]) and np.array_equal(
        over_white(rgba[0:1, 2:3])[0, 0], [255, 127, 127]
    )
