"""The result's critical path: level-0 history PNG then background recompression, make_result's contiguous copy,
and frames assembled around the pixel buffers (byte for byte what msgpack writes)."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
from ace_protocol.codec import decode_client_message, decode_server_message, encode
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Result, Submit

from bridge_server.imaging.codecs import decode_png
from bridge_server.imaging.compositing import _rgba_backing, make_result
from bridge_server.store import history as history_module
from bridge_server.store.history import History, HistoryUnavailable

ENTRY = "0" * 32 + "-0"


def _image(side: int = 300) -> np.ndarray:
    rng = np.random.default_rng(side)
    rgba = np.repeat(rng.integers(0, 256, (side, 1, 4), dtype=np.uint8), side, axis=1)  # compressible
    rgba[::5, ::3] = 9
    return rgba


def _is_stored_png(data: bytes, rgba: np.ndarray) -> bool:
    return len(data) > rgba.nbytes  # level 0: the pixels plus filter bytes and block headers


def test_history_writes_level0_first_then_replaces_it_with_level1(tmp_path, monkeypatch):
    history = History(tmp_path)
    history.open()
    rgba = _image()
    gate = threading.Event()
    real = history._recompress

    def held(entry, pixels, saved_at):
        gate.wait(10)
        real(entry, pixels, saved_at)

    monkeypatch.setattr(history, "_recompress", held)
    assert history.save(ENTRY, rgba, {"finished": 1})
    png = tmp_path / f"{ENTRY}.png"
    first = png.read_bytes()
    assert _is_stored_png(first, rgba)  # on disk, complete and readable before `result` would be sent
    assert np.array_equal(history.load_image(ENTRY), rgba)
    gate.set()
    history.wait_background(10)
    second = png.read_bytes()
    assert len(second) < len(first) // 2
    assert np.array_equal(decode_png(second), rgba)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{ENTRY}.json", f"{ENTRY}.png"]  # no .part left


def test_a_delete_during_recompression_is_not_undone(tmp_path, monkeypatch):
    history = History(tmp_path)
    history.open()
    gate = threading.Event()
    real = history._recompress
    monkeypatch.setattr(history, "_recompress", lambda e, p, t: (gate.wait(10), real(e, p, t)))
    history.save(ENTRY, _image(), {"finished": 1})
    assert history.delete(ENTRY)
    gate.set()
    history.wait_background(10)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(HistoryUnavailable):
        history.load_image(ENTRY)


def test_strict_mode_writes_level1_and_schedules_nothing(tmp_path, monkeypatch):
    history = History(tmp_path, deferred_compress=False)
    history.open()
    monkeypatch.setattr(history_module, "_background", lambda: pytest.fail("no background work in strict mode"))
    rgba = _image()
    assert history.save(ENTRY, rgba, {"finished": 1})
    data = (tmp_path / f"{ENTRY}.png").read_bytes()
    assert len(data) < rgba.nbytes // 2 and np.array_equal(decode_png(data), rgba)


def test_a_png_cut_short_reads_as_unavailable_not_as_a_crash(tmp_path):
    history = History(tmp_path)
    history.open()
    history.save(ENTRY, _image(), {"finished": 1})
    history.wait_background(10)
    png = tmp_path / f"{ENTRY}.png"
    png.write_bytes(png.read_bytes()[:100])  # what a power loss before the data reached the disk can leave
    with pytest.raises(HistoryUnavailable):
        history.load_image(ENTRY)


def test_make_result_copies_an_rgba_backing_in_one_piece_and_matches_the_general_path():
    rgba = _image(64)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:50, 5:60] = 200
    expected = np.dstack([rgba[..., :3], mask])
    for rgb in (rgba[..., :3], np.ascontiguousarray(rgba[..., :3]), rgba[1:, :, :3], rgba[:, :32, :3]):
        m = mask[: rgb.shape[0], : rgb.shape[1]]
        out = make_result(rgb, m, 0)
        assert np.array_equal(out, np.dstack([rgb, m]) if m.any() else np.dstack([rgb, np.full_like(m, 255)]))
        assert out.flags.c_contiguous and out.flags.writeable
    assert _rgba_backing(rgba[..., :3]) is not None
    assert _rgba_backing(np.ascontiguousarray(rgba[..., :3])) is None  # no 4th byte to borrow
    assert _rgba_backing(rgba[:, :32, :3]) is None  # row stride is not width * 4
    assert _rgba_backing(rgba[..., 1:4]) is None
    assert np.array_equal(make_result(rgba[..., :3], mask, 0), expected)


def test_frames_with_big_pixel_buffers_are_byte_for_byte_msgpack():
    rgba = _image(200)
    mask = np.ascontiguousarray(rgba[..., 0])
    submit = Submit(
        id="r1",
        task="reference_edit",
        prompt="p",
        image=ImagePayload(200, 200, "rgba8", memoryview(rgba).cast("B")),
        mask=ImagePayload(200, 200, "gray8", memoryview(mask).cast("B")),
        references=[ImagePayload(200, 200, "rgba8", rgba.tobytes()), ImagePayload(1, 1, "gray8", b"x")],
        params={"steps": 1, "names": [str(i) for i in range(20)], "nested": {"a": [1, 2.5, None]}},
    )
    result = Result(
        job_id="j",
        index=0,
        count=1,
        seed=3,
        image=ImagePayload(200, 200, "rgba8", rgba.tobytes()),
        provenance={"k": {str(i): i for i in range(20)}},
    )
    for message in (submit, result):
        frame = encode(message)
        assert frame == msgpack.packb(message.to_wire(), use_bin_type=True)
    assert decode_client_message(encode(submit)).image.data == rgba.tobytes()
    assert decode_server_message(encode(result)).image.data == rgba.tobytes()


def test_fragments_concatenate_to_the_frame_and_reference_the_pixels():
    from ace_protocol.codec import encode_fragments

    rgba = _image(200)
    view = memoryview(rgba).cast("B")
    submit = Submit(
        id="r1",
        task="edit",
        prompt="p",
        image=ImagePayload(200, 200, "rgba8", view),
        references=[ImagePayload(200, 200, "rgba8", rgba.tobytes())],
        params={"steps": 1},
    )
    pieces = encode_fragments(submit)
    assert b"".join(pieces) == encode(submit)
    assert len(pieces) == 5  # head, pixels, the bytes between, reference pixels, tail
    assert any(isinstance(p, memoryview) and p.obj is rgba for p in pieces)  # not copied
    assert encode_fragments(
        Result(job_id="j", index=0, count=1, seed=1, image=ImagePayload(1, 1, "rgba8", b"1234"))
    ) == [
        msgpack.packb(
            Result(job_id="j", index=0, count=1, seed=1, image=ImagePayload(1, 1, "rgba8", b"1234")).to_wire(),
            use_bin_type=True,
        )
    ]


def test_recompression_waits_while_the_result_is_delivered_unless_someone_waits_for_it(tmp_path):
    history = History(tmp_path, recompress_delay_s=0.5)
    history.open()
    rgba = _image()
    assert history.save(ENTRY, rgba, {"finished": 1})
    png = tmp_path / f"{ENTRY}.png"
    first = png.read_bytes()
    threading.Event().wait(0.2)
    assert png.read_bytes() == first, "still the stored PNG: the CPUs are left to delivering the result"
    history.wait_background(10)
    assert len(png.read_bytes()) < len(first) // 2

    patient = History(tmp_path / "patient", recompress_delay_s=60.0)
    patient.open()
    assert patient.save(ENTRY, rgba, {"finished": 1})
    started = threading.Event()
    waiter = threading.Thread(target=lambda: (started.set(), patient.wait_background(10)))
    waiter.start()
    waiter.join(10)
    assert started.is_set() and not waiter.is_alive(), "wait_background must cut the delay short"
    assert len((tmp_path / "patient" / f"{ENTRY}.png").read_bytes()) < len(first) // 2


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (300, 301), (2048, 17), (5, 16383)])
def test_the_stored_png_decodes_to_the_same_pixels_at_any_size(shape):
    from bridge_server.imaging.codecs import encode_png_stored

    rgba = np.random.default_rng(3).integers(0, 256, (*shape, 4), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png_stored(rgba).tobytes()), rgba)
