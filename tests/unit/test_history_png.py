"""The history PNG writer (on every job's critical path, before `result`) is lossless and standard."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bridge_server.imaging.codecs import decode_png, encode_png


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (33, 17), (64, 64)])
@pytest.mark.parametrize("level", [0, 1, 6])
def test_encode_png_round_trips_bit_for_bit(shape, level):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    rgba = rng.integers(0, 256, shape + (4,), dtype=np.uint8)
    data = encode_png(rgba, compress_level=level)
    assert np.array_equal(decode_png(data), rgba)
    with Image.open(io.BytesIO(data)) as img:  # a standard PNG, verified by Pillow's own checks
        img.verify()


def test_encode_png_accepts_non_contiguous_views_and_other_shapes():
    rgba = np.arange(8 * 6 * 4, dtype=np.uint8).reshape(8, 6, 4)
    view = rgba[:, ::2]
    assert np.array_equal(decode_png(encode_png(view)), view)
    rgb = rgba[..., :3]
    assert np.array_equal(decode_png(encode_png(np.ascontiguousarray(rgb)))[..., :3], rgb)


def test_large_images_use_the_sliced_parallel_deflate_and_still_round_trip():
    from bridge_server.imaging import codecs as imaging

    rng = np.random.default_rng(5)
    rgba = np.repeat(rng.integers(0, 256, (1100, 1, 4), dtype=np.uint8), 1024, axis=1)  # 4.5 MB, compressible
    rgba[::7, ::3] = 17
    assert rgba.nbytes >= imaging._PARALLEL_MIN
    for level in (0, 1):
        data = encode_png(rgba, compress_level=level)
        assert np.array_equal(decode_png(data), rgba)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    assert len(encode_png(rgba)) < rgba.nbytes // 4


@pytest.mark.parametrize(
    "shape", [(1, 1), (1, 7), (5, 1), (33, 17), (64, 64), (300, 300), (9, 2000), (2, 16383), (2, 16384)]
)
def test_stored_png_built_in_place_round_trips_and_is_standard(shape):
    from bridge_server.imaging.codecs import encode_png_stored

    rgba = np.random.default_rng(shape[0] + shape[1]).integers(0, 256, shape + (4,), dtype=np.uint8)
    data = encode_png_stored(rgba).tobytes()  # (2, 16384): rows over 65,535 bytes take the zlib path
    assert np.array_equal(decode_png(data), rgba)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    assert data == encode_png(rgba, compress_level=0)
