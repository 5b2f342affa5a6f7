"""ace_editor.settings and ace_editor.history: stored data read defensively, profile state, the job history."""

from __future__ import annotations

import json
from dataclasses import dataclass

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
