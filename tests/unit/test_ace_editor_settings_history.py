"""ace_editor.settings and ace_editor.history: stored data read defensively, profile state, the job history."""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass

import pytest
from ace_editor import history, settings
from ace_editor.jobs import ResultImage


@dataclass
class Example:
    version: int = 2
    name: str = "x"
    steps: int = 0
    on: bool = False


def test_settings_keep_typed_values_and_drop_the_rest():
    text = settings.settings_to_json(Example(name="y", steps=4, on=True))
    assert settings.settings_from_json(Example, text) == Example(name="y", steps=4, on=True)
    bad = settings.settings_from_json(Example, '{"steps": "many", "on": 1, "unknown": 3, "name": "z"}')
    assert bad == Example(name="z")
    assert settings.settings_from_json(Example, '{"steps": true}').steps == 0  # a bool is no int here
    assert settings.settings_from_json(Example, "not json") == Example()
    assert settings.settings_from_json(Example, "[1, 2]") == Example()


def test_settings_migrate_older_data_before_reading_it():
    def migrate(raw):
        if raw.get("version", 1) < 2 and raw.get("steps") == 28:
            raw["steps"] = 0

    assert settings.settings_from_json(Example, '{"version": 1, "steps": 28}', migrate).steps == 0
    assert settings.settings_from_json(Example, '{"version": 2, "steps": 28}', migrate).steps == 28


def test_profile_state_keeps_a_stable_client_id_and_pending_jobs(tmp_path):
    path = tmp_path / "profile" / "state.json"
    first = settings.ProfileState(path, "gimp")
    assert first.client_id.startswith("gimp-")
    first.session = "s1"
    first.add_pending("j1", {"task": "inpaint", "region": [1, 2, 3, 4]})
    again = settings.ProfileState(path, "gimp")
    assert again.client_id == first.client_id and again.session == "s1"
    assert again.pending("j1") == {"task": "inpaint", "region": [1, 2, 3, 4]}
    again.remove_pending("j1")
    assert settings.ProfileState(path, "gimp").pending("j1") is None
    assert json.loads(path.read_text())["client_id"] == first.client_id
    path.write_text("not json")
    assert settings.ProfileState(path, "gimp").client_id != first.client_id  # unreadable state: start over


def _result(seed: int) -> ResultImage:
    return ResultImage(0, 1, seed, 1, 1, b"\0\0\0\0", {"task": "inpaint", "prompt": "a vase", "params": {"steps": 2}})


def test_history_is_newest_first_bounded_and_finds_jobs():
    jobs = history.History(limit=2)
    for i in range(3):
        jobs.add(history.JobRecord(f"j{i}", "doc", "inpaint", "p", {}, (0, 0, 1, 1), "image", None))
    assert [r.job_id for r in jobs] == ["j2", "j1"] and len(jobs) == 2 and jobs[0].job_id == "j2"
    assert jobs.find("j1") is not None and jobs.find("j0") is None
    assert jobs.last_seed() is None
    jobs.find("j1").results.append(_result(9))
    assert jobs.last_seed() == 9 and [r.job_id for r in jobs.with_results()] == ["j1"]


def test_a_redelivered_job_is_described_by_its_results_provenance():
    record = history.redelivered_record("j9", [_result(3)])
    assert (record.task, record.prompt, record.params, record.state) == ("inpaint", "a vase", {"steps": 2}, "done")
    assert record.finished and record.results[0].seed == 3


def _done(job_id: str, seed: int, pixels: bytes = bytes(range(16))) -> history.JobRecord:
    record = history.JobRecord(
        job_id,
        "doc-1",
        "local_edit",
        "Make the hat red in {image} mask.",
        {"seed": seed, "mode": "repaint"},
        (10, 20, 2, 2),
        "image",
        "layer-uuid",
        instruction="make the hat red",
    )
    record.results = [ResultImage(0, 1, seed, 2, 2, pixels, {"task": "local_edit", "seed": seed})]
    record.state = "done"
    record.layer_ids = ["result-layer"]
    return record


def test_the_history_stored_with_a_document_comes_back_with_pixels_prompt_and_seed():
    newest, older = _done("j2", 7, bytes(range(100, 116))), _done("j1", 3)
    running = history.JobRecord("j3", "doc-1", "inpaint", "p", {}, (0, 0, 1, 1), "image", None)
    failed = history.JobRecord("j0", "doc-1", "inpaint", "p", {}, (0, 0, 1, 1), "image", None, state="failed")
    loaded = history.history_from_bytes(history.history_to_bytes([running, newest, older, failed]))
    assert [r.job_id for r in loaded] == ["j2", "j1"]  # finished jobs with results only, order kept
    back = loaded[0]
    assert back == newest  # every field, the pixels included
    assert back.typed == "make the hat red" and back.results[0].rgba == bytes(range(100, 116))
    assert back.region == (10, 20, 2, 2) and back.anchor_node == "layer-uuid" and back.layer_ids == ["result-layer"]


def test_only_the_newest_jobs_whose_pixels_fit_are_stored():
    records = [_done(f"j{i}", i) for i in range(5)]  # 16 bytes of pixels each
    loaded = history.history_from_bytes(history.history_to_bytes(records, max_pixel_bytes=40))
    assert [r.job_id for r in loaded] == ["j0", "j1"]


def test_a_reopened_documents_history_is_merged_without_duplicates():
    jobs = history.History(limit=3)
    jobs.add(_done("j1", 1))
    assert jobs.merge([_done("j1", 1), _done("j0", 0), _done("k", 2), _done("m", 3)]) == 3
    assert [r.job_id for r in jobs] == ["j1", "j0", "k"]
    assert [r.job_id for r in jobs.of_document("doc-1")] == ["j1", "j0", "k"] and jobs.of_document("x") == []


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not in the ace-bridge-history format"),
        (b'{"format": "ace-bridge-history", "version": 99, "records": []}', "version 99"),
        (b'{"format": "ace-bridge-history", "version": 1}', "no list of records"),
        (b'{"format": "ace-bridge-history", "version": 1, "records": [{"job_id": 3}]}', "'region'"),
        (
            b'{"format": "ace-bridge-history", "version": 1, "records": [{"job_id": 3, "region": [0, 0, 1, 1], '
            b'"results": []}]}',
            "'job_id' is missing or not a str",
        ),
    ],
)
def test_stored_history_that_is_not_ours_or_damaged_is_a_typed_error(data, says):
    with pytest.raises(history.HistoryFormatError, match=says):
        history.history_from_bytes(data)


def test_damaged_or_short_pixels_are_refused():
    stored = json.loads(history.history_to_bytes([_done("j1", 1)]))
    result = stored["records"][0]["results"][0]
    result["rgba_zlib_b64"] = "not base64!"
    with pytest.raises(history.HistoryFormatError, match="damaged pixels"):
        history.history_from_bytes(json.dumps(stored).encode())
    result["rgba_zlib_b64"] = base64.b64encode(zlib.compress(b"short")).decode()
    with pytest.raises(history.HistoryFormatError, match="5 bytes of pixels for 2x2"):
        history.history_from_bytes(json.dumps(stored).encode())
    assert history.history_from_bytes(b"") == [] and history.history_from_bytes(None) == []


def test_a_pixel_cache_compresses_each_result_once_and_keeps_only_the_stored_ones(monkeypatch):
    compressed = []
    real = history._encoded_pixels
    monkeypatch.setattr(history, "_encoded_pixels", lambda r: compressed.append(r.seed) or real(r))
    cache: history.PixelCache = {}
    first = history.history_to_bytes([_done("j1", 1)], cache=cache)
    again = history.history_to_bytes([_done("j2", 2), _done("j1", 1)], cache=cache)
    assert compressed == [1, 2]  # j1's pixels were not compressed a second time
    assert history.history_from_bytes(again)[1] == history.history_from_bytes(first)[0]
    history.history_to_bytes([_done("j2", 2)], cache=cache)
    assert set(cache) == {("j2", 0)}  # j1 left the stored history, and the cache
