"""progress.preview through the real daemon (tiny model): JPEGs only for a client whose hello asked for them."""

from __future__ import annotations

import io

from integration_helpers import collect, connect, ellipse_mask, gradient_image, gray_payload, rgba_payload
from PIL import Image


def inpaint(client, steps: int):
    return client.submit(
        "inpaint",
        "a red hat",
        image=rgba_payload(gradient_image()),
        mask=gray_payload(ellipse_mask()),
        params={"seed": 3, "steps": steps},
    )


def test_previews_only_for_the_client_that_asked(thread_daemon_factory):
    daemon = thread_daemon_factory()  # the tiny engine's default: a preview every 4 steps, never the last
    wanting = connect(daemon, client_id="wants-previews", previews=True)
    try:
        events = collect(inpaint(wanting, steps=9))
    finally:
        wanting.close()
    progress = [e for e in events if e.TYPE == "progress"]
    assert [e.step for e in progress] == list(range(1, 10))
    with_preview = [e for e in progress if e.preview is not None]
    assert [e.step for e in with_preview] == [4, 8]
    for event in with_preview:
        assert event.preview.format == "jpeg"
        img = Image.open(io.BytesIO(event.preview.data))
        img.load()
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == (event.preview.width, event.preview.height)
        assert max(img.size) <= 256 and min(img.size) >= 8
    assert events[-1].TYPE == "done"

    plain = connect(daemon, client_id="no-previews")
    try:
        events = collect(inpaint(plain, steps=9))
    finally:
        plain.close()
    assert [e.step for e in events if e.TYPE == "progress"] == list(range(1, 10))
    assert all(e.preview is None for e in events if e.TYPE == "progress")
    assert events[-1].TYPE == "done"
