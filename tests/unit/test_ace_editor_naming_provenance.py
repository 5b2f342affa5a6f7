"""ace_editor.naming and ace_editor.provenance: one layer name and one provenance record for both editors."""

from __future__ import annotations

import pytest
from ace_editor import naming, provenance
from ace_protocol import __version__


@pytest.mark.parametrize(
    ("task", "prompt", "seed", "index", "count", "expected"),
    [
        ("local_edit", "make it green in {image}.", 5, 0, 1, "[ACE++] local_edit: make it green (seed 5)"),
        ("instruct", "{image} watercolour", 7, 0, 1, "[ACE++] instruct: watercolour (seed 7)"),
        ("inpaint", "a vase", 1, 1, 3, "[ACE++] inpaint: a vase (seed 1) #2/3"),
        ("inpaint", "x" * 80, 2, 0, 1, "[ACE++] inpaint: " + "x" * 39 + "… (seed 2)"),
        ("generate", "a castle", None, 0, 1, "[ACE++] generate: a castle"),
    ],
)
def test_layer_name_says_task_prompt_seed(task, prompt, seed, index, count, expected):
    assert naming.layer_name(task, prompt, seed, index, count) == expected


def test_group_name_counts_images():
    assert naming.group_name("inpaint", "a vase", 3, 4).endswith("(seed 3) ×4")


@pytest.mark.parametrize(
    ("template", "text", "expected"),
    [
        ("Remove the apple in {image} mask.", "make it green", "make it green in {image}."),
        ("{image} make it look like a watercolour painting", "pencil sketch", "{image} pencil sketch"),
        ("A lighthouse on a cliff at dusk.", "a castle", "a castle"),
        ("Remove the apple in {image} mask.", "turn {image} blue", "turn {image} blue"),
    ],
)
def test_apply_template(template, text, expected):
    assert naming.apply_template(template, text) == expected


def test_record_keeps_the_request_and_the_daemons_provenance():
    rec = provenance.provenance_record(
        "inpaint",
        "a vase",
        5,
        {"steps": 2},
        (1, 2, 3, 4),
        "image",
        "j1",
        {"model": "tiny", "editor": "gimp 3.0", "task": "ignored"},
        1,
        2,
    )
    assert rec["format"] == provenance.FORMAT and rec["plugin_version"] == __version__
    assert (rec["task"], rec["seed"], rec["index"], rec["count"], rec["region"]) == ("inpaint", 5, 1, 2, [1, 2, 3, 4])
    assert rec["model"] == "tiny" and rec["editor"] == "gimp 3.0" and rec["server"]["task"] == "ignored"
    assert provenance.parse_record(provenance.record_bytes(rec)) == rec
    with pytest.raises(ValueError):
        provenance.parse_record(b"[1]")


def test_provenance_store_round_trip_and_migration():
    store = provenance.ProvenanceStore()
    rec = provenance.provenance_record(
        "inpaint", "a vase", 5, {"steps": 2}, (1, 2, 3, 4), "image", "j1", {"model": "tiny"}
    )
    store.add("{uid}", rec)
    again = provenance.ProvenanceStore.from_bytes(store.to_bytes())
    assert again.get("{uid}")["model"] == "tiny" and again.get("{uid}")["params"] == {"steps": 2}
    old = b'{"records": [{"layer_id": "{a}", "seed": 1}]}'
    assert provenance.ProvenanceStore.from_bytes(old).get("{a}") == {"layer_id": "{a}", "seed": 1}
    for junk in (b"", b"\xff\xfe", b"[]", b'{"layers": 3}'):
        assert provenance.ProvenanceStore.from_bytes(junk).layers == {}
