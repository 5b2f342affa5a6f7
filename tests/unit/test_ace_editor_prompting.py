"""ace_editor.prompting and RecentPrompts: the painter types plain words, the daemon gets an ACE++ prompt."""

from __future__ import annotations

import pytest
from ace_editor.history import RecentPrompts
from ace_editor.prompting import painter_prompt
from ace_protocol.tasks import TASKS


@pytest.mark.parametrize(
    ("task", "mode", "expected"),
    [
        ("instruct", None, "{image} make the hat red."),
        ("local_edit", None, "Make the hat red in {image} mask."),
        ("local_edit", "repaint", "Make the hat red in {image} mask."),
        (
            "local_edit",
            "canny",
            "By referencing the mask, restore a partial image from the doodle {image} that "
            'aligns with the textual explanation: "make the hat red".',
        ),
        (
            "local_edit",
            "contour",  # the authors' owl example: contour_repainting with this wording
            "By referencing the mask, restore a partial image from the doodle {image} that "
            'aligns with the textual explanation: "make the hat red".',
        ),
        ("reference_edit", None, "Make the hat red in {image}."),
        ("inpaint", None, "Make the hat red."),
        ("generate", None, "Make the hat red."),
        ("fft_colorize", None, "{image} make the hat red."),
        ("fft_repaint", None, "Make the hat red."),
    ],
)
def test_plain_words_become_the_tasks_ace_prompt(task, mode, expected):
    assert painter_prompt(task, "  make the hat  red. ", mode=mode) == expected


@pytest.mark.parametrize("task", list(TASKS))
def test_raw_prompts_with_the_image_token_and_the_advanced_form_pass_untouched(task):
    raw = "Please colorize the selected area mask in {image} without changing anything else."
    assert painter_prompt(task, raw) == raw
    assert painter_prompt(task, "  make the hat red ", advanced=True) == "make the hat red"
    assert painter_prompt(task, "") == ""


def test_every_task_whose_template_names_the_image_gets_the_token():
    for name, spec in TASKS.items():
        prompt = painter_prompt(name, "a red hat")
        assert ("{image}" in prompt) == ("{image}" in spec.prompt_template), name


def test_an_unknown_task_follows_its_announced_template():
    assert painter_prompt("future", "a red hat", template="{image} example") == "{image} a red hat"
    assert painter_prompt("future", "a red hat") == "a red hat"


def test_recent_prompts_are_bounded_deduplicated_and_most_recent_first():
    recent = RecentPrompts(limit=3)
    for prompt in ("a red hat", "blue sky", "A  red hat ", "", "green grass", "sunset"):
        recent.add(prompt)
    assert recent.to_list() == ["sunset", "green grass", "A red hat"]
    again = RecentPrompts.from_list(recent.to_list(), limit=3)
    assert again.to_list() == recent.to_list()
    assert RecentPrompts.from_list("not a list").to_list() == []
    assert RecentPrompts.from_list(["ok", 3, None]).to_list() == ["ok"]
