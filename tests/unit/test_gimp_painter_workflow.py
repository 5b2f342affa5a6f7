"""The GIMP plug-in's painter workflow logic (issue 17), on the host without GIMP: the strength slider, the
painter's prompt wording and recent prompts, reusing a result layer's prompt and seed, preview-then-apply,
Expand Canvas's job, and Recent Results' history reader against a real demo daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins_gimp" / "ace-bridge"))

import acegimp_logic as logic  # noqa: E402
from ace_protocol.geometry import Bounds, Extent  # noqa: E402

CANVAS = Extent(96, 64)


def action(task: str) -> logic.Action:
    return next(a for a in logic.ACTIONS if a.task == task)


def _mnemonic(label: str) -> str:
    return label[label.index("_") + 1].lower()


def test_strength_is_a_slider_on_exactly_the_masked_tasks_and_one_leaves_the_job_unchanged():
    for a in logic.ACTIONS:
        args = {x.name: x for x in logic.procedure_arguments(a)}
        assert ("strength" in args) == (a.spec.param("strength") is not None), a.task
    slider = {x.name: x for x in logic.procedure_arguments(action("inpaint"))}["strength"]
    assert (slider.kind, slider.minimum, slider.maximum, slider.default) == ("double", 0.05, 1.0, 1.0)
    plan = logic.plan_job(action("inpaint"), logic.Settings(), CANVAS, Bounds(4, 4, 20, 20))
    assert "strength" not in logic.build_params(action("inpaint"), logic.Settings(strength=1.0), plan)
    low = logic.build_params(action("inpaint"), logic.Settings(strength=0.3), plan)
    assert low == {"strength": 0.3}
    assert logic.build_params(action("inpaint"), logic.Settings(strength=0.01), plan) == {"strength": 0.05}


def test_the_painters_words_get_the_task_wording_and_advanced_sends_them_as_typed():
    local = action("local_edit")
    plan = logic.plan_job(local, logic.Settings(), CANVAS, Bounds(4, 4, 20, 20))
    settings = logic.Settings(prompt="make the hat red")
    params = logic.build_params(local, settings, plan)
    assert logic.job_prompt(local, settings, params) == "Make the hat red in {image} mask."
    raw = logic.Settings(prompt="make the hat red", advanced=True)
    assert logic.job_prompt(local, raw, params) == "make the hat red"
    assert logic.job_prompt(action("instruct"), settings, {}) == "{image} make the hat red"
    sketch = logic.build_params(local, logic.Settings(prompt="a cat", mode="no_preprocess"), plan)
    assert "doodle {image}" in logic.job_prompt(local, logic.Settings(prompt="a cat"), sketch)


def test_new_arguments_keep_every_dialog_mnemonic_unique():
    for a in [*logic.ACTIONS]:
        labels = [x.label for x in logic.procedure_arguments(a)] + list(logic.CONNECTION_LABELS.values())
        keys = [_mnemonic(label) for label in labels]
        assert len(set(keys)) == len(keys) and not set(keys) & set(logic.DIALOG_BUTTON_MNEMONICS), (a.task, labels)
    labels = [x.label for x in logic.expand_arguments()] + list(logic.CONNECTION_LABELS.values())
    keys = [_mnemonic(label) for label in labels]
    assert len(set(keys)) == len(keys) and not set(keys) & set(logic.DIALOG_BUTTON_MNEMONICS), labels


def test_reuse_takes_prompt_and_seed_from_a_result_layers_record_and_refuses_a_plain_layer():
    record = {"task": "inpaint", "prompt": "a red apple", "seed": 1234}
    got = logic.reuse_from_record(logic.Settings(prompt="other", seed=-1, steps=9), record)
    assert (got.prompt, got.seed, got.steps) == ("a red apple", 1234, 9)
    with pytest.raises(logic.UserError, match="no ACE\\+\\+ provenance"):
        logic.reuse_from_record(logic.Settings(), None)


def test_recent_prompts_are_kept_in_the_profile_newest_first_without_duplicates(tmp_path):
    store = logic.RecentPromptFile(tmp_path / logic.PROMPTS_FILE)
    for prompt in ("a red hat", "a blue sky", "A  red hat", ""):
        store.add(prompt)
    assert logic.RecentPromptFile(tmp_path / logic.PROMPTS_FILE).prompts == ["A red hat", "a blue sky"]
    (tmp_path / logic.PROMPTS_FILE).write_text("{not json")
    assert logic.RecentPromptFile(tmp_path / logic.PROMPTS_FILE).prompts == []


def test_preview_then_apply_shows_one_result_at_a_time_and_keeps_the_chosen_one():
    picker = logic.ResultPicker(3)
    assert picker.show(0) == (None, 0)
    assert picker.show(0) == (None, None)  # already shown: nothing to redo
    assert picker.show(2) == (0, 2)
    assert picker.apply() == 2
    with pytest.raises(RuntimeError):
        picker.show(1)
    untouched = logic.ResultPicker(2)
    assert untouched.apply() == 0  # Apply without picking keeps the first
    with pytest.raises(IndexError):
        logic.ResultPicker(2).show(2)
    assert logic.preview_layer_name("inpaint", "a hat", 5, 0, 1).startswith(logic.PREVIEW_PREFIX)
    assert logic.thumbnail_size(1024, 512) == (160, 80) and logic.thumbnail_size(10, 20) == (10, 20)


def test_expand_canvas_sends_the_grown_canvas_with_the_new_area_as_mask():
    canvas = Extent(4, 2)
    rgba = bytes(range(4 * 2 * 4))
    plan = logic.plan_expand(canvas, (2, 0, 0, 1), rgba)
    assert plan.grown == Extent(6, 3)
    assert (plan.image.width, plan.image.height, plan.mask.width, plan.mask.height) == (6, 3, 6, 3)
    assert plan.image.data[:8] == rgba[:4] * 2  # the edge pixel repeated outward
    assert plan.mask.data[0] == 255 and plan.mask.data[-1] == 255
    with pytest.raises(logic.UserError, match="at least one side"):
        logic.plan_expand(canvas, (0, 0, 0, 0), rgba)
    assert logic.expand_task([{"name": "generate"}, {"name": "fft_repaint"}, {"name": "inpaint"}]) == "inpaint"
    with pytest.raises(logic.UserError, match="expand"):
        logic.expand_task([{"name": "generate"}])


def test_job_labels_name_the_document_and_region_so_recent_results_find_them():
    label = logic.job_label("photo.xcf", Bounds(16, 8, 64, 48))
    assert label == "GIMP: photo.xcf at 16,8 64x48"
    entries = [
        {"entry": "a", "label": label},
        {"entry": "b", "label": "GIMP: other.xcf at 0,0 8x8"},
        {"entry": "c", "label": "cli"},
        {"entry": "d", "label": "Krita: photo.xcf at 0,0 8x8"},
    ]
    assert [e["entry"] for e in logic.results_for_document(entries, "photo.xcf")] == ["a"]
    assert logic.result_place(entries[0]) == (16, 8, 64, 48) and logic.result_place(entries[2]) is None
    long = logic.job_label("x" * 400 + ".xcf", Bounds(0, 0, 1, 1))
    assert len(long) <= 256 and logic.result_place({"label": long}) == (0, 0, 1, 1)


def test_recent_results_reads_a_real_daemons_history_for_one_document(demo_daemon):
    from ace_protocol.client import BridgeClient
    from ace_protocol.images import ImagePayload

    client = BridgeClient(demo_daemon.url, demo_daemon.token, client_name="test-gimp-history")
    client.connect()
    try:
        image = ImagePayload(32, 32, "rgba8", bytes([120, 60, 30, 255]) * (32 * 32))
        mask = ImagePayload(32, 32, "gray8", b"\xff" * (32 * 32))
        for document in ("photo.xcf", "other.xcf"):
            label = logic.job_label(document, Bounds(5, 6, 32, 32))
            job = client.submit("inpaint", "hat", image=image, mask=mask, params={"seed": 4, "steps": 2}, label=label)
            assert [e.TYPE for e in job.events(timeout=120)][-1] == "done"
    finally:
        client.close()
    reader = logic.DaemonHistory(demo_daemon.url, demo_daemon.token)
    mine = logic.results_for_document(reader.entries(), "photo.xcf")
    assert len(mine) == 1 and mine[0]["seed"] == 4 and logic.result_place(mine[0]) == (5, 6, 32, 32)
    png = reader.image(mine[0]["entry"])
    assert png.startswith(b"\x89PNG")
    record = logic.record_from_entry(mine[0], reader.meta(mine[0]["entry"]))
    assert (record["task"], record["prompt"], record["seed"], record["region"]) == ("inpaint", "hat", 4, [5, 6, 32, 32])
    with pytest.raises(logic.HistoryError, match="refused the token"):
        logic.DaemonHistory(demo_daemon.url, "wrong-token").entries()
    with pytest.raises(logic.HistoryError, match="not a history entry"):
        reader.image("../../etc/passwd")
