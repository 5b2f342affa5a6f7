"""History keeps the input a result was made from, small and private, beside the result (the panel's before)."""

from __future__ import annotations

import stat

import numpy as np
from PIL import Image

from bridge_server.store.history import BEFORE_MAX_SIDE, History


def test_the_input_is_kept_small_private_and_deleted_with_the_result(tmp_path):
    history = History(tmp_path / "h", deferred_compress=False)
    history.open()
    entry = "0" * 32 + "-0"
    result = np.zeros((600, 1200, 4), np.uint8)
    source = np.full((600, 1200, 4), 200, np.uint8)
    assert history.save(entry, result, {"finished": 1.0}, before=source)
    before = tmp_path / "h" / f"{entry}.before.png"
    assert stat.S_IMODE(before.stat().st_mode) == 0o600
    with Image.open(before) as img:
        assert img.size == (BEFORE_MAX_SIDE, BEFORE_MAX_SIDE // 2)
    assert history.meta(entry)["before"] is True
    assert history.delete(entry) and not before.exists()
    other = "1" * 32 + "-0"
    assert history.save(other, result, {"finished": 2.0})
    assert "before" not in history.meta(other)
