"""ace_protocol.geometry's expand helpers: the grown canvas, the outpainting mask with its feathered seam."""

from __future__ import annotations

import pytest
from ace_protocol.geometry import (
    EXPAND_SEAM,
    Bounds,
    Extent,
    Margins,
    expand_mask,
    expand_pixels,
    expanded_extent,
    margins_for,
    original_bounds,
)


def rows(data: bytes, width: int) -> list[list[int]]:
    return [list(data[i : i + width]) for i in range(0, len(data), width)]


def test_parse_margins():
    assert Margins.parse("0, 8,256,0") == Margins(0, 8, 256, 0)
    assert Margins.parse("32") == Margins(32, 32, 32, 32)
    for bad in ("1,2,3", "a,b,c,d", "-1,0,0,0", "0,0,0,0", "", "0,0,0,99999"):
        with pytest.raises(ValueError, match="expand"):
            Margins.parse(bad)


def test_grown_extent_and_where_the_old_canvas_lies():
    m = Margins(10, 20, 30, 40)
    assert expanded_extent(Extent(100, 50), m) == Extent(140, 110)
    assert original_bounds(Extent(100, 50), m) == Bounds(10, 20, 100, 50)


def test_a_selection_past_the_canvas_gives_the_margins():
    assert margins_for(Bounds(-5, 10, 50, 200), Extent(100, 100)) == Margins(5, 0, 0, 110)
    assert margins_for(Bounds(10, 10, 20, 20), Extent(100, 100)).is_zero


def test_mask_is_full_on_the_new_area_ramps_into_the_old_and_is_zero_beyond_the_seam():
    canvas, m = Extent(40, 30), Margins(0, 0, 8, 0)
    data = expand_mask(canvas, m, seam=4)
    grid = rows(data, 48)
    assert len(grid) == 30 and all(len(r) == 48 for r in grid)
    for r in grid:
        assert r[40:] == [255] * 8  # the new area
        assert r[:36] == [0] * 36  # the old canvas beyond the seam
        seam = r[36:40]
        assert seam == sorted(seam) and 0 < seam[0] < seam[-1] < 255  # rising toward the new area


def test_mask_on_every_side_and_without_a_seam():
    canvas, m = Extent(20, 10), Margins(2, 3, 4, 5)
    grid = rows(expand_mask(canvas, m, seam=0), 26)
    assert len(grid) == 18
    assert grid[0] == [255] * 26 and grid[-1] == [255] * 26
    assert grid[3] == [255] * 2 + [0] * 20 + [255] * 4
    soft = rows(expand_mask(canvas, m), 26)
    assert soft[3][2] > 0 and EXPAND_SEAM > 0


def test_pixels_grow_by_repeating_the_edges():
    canvas = Extent(2, 2)
    data = bytes([1, 2, 3, 4])  # gray8: rows [1, 2], [3, 4]
    grown = expand_pixels(data, canvas, Margins(1, 1, 2, 0), 1)
    assert rows(grown, 5) == [[1, 1, 2, 2, 2], [1, 1, 2, 2, 2], [3, 3, 4, 4, 4]]
    with pytest.raises(ValueError):
        expand_pixels(b"\0" * 3, canvas, Margins(1, 1, 1, 1), 1)
