"""ace_editor.previews: a painter asks for N variations, sees the first at once, looks at another, applies one or
discards them all; a newer job retires the older choice."""

from __future__ import annotations

import pytest
from ace_editor.jobs import ResultImage
from ace_editor.previews import APPLIED, DISCARDED, RETIRED, PreviewBoard, PreviewError


def variation(index: int, count: int = 3, seed: int = 40) -> ResultImage:
    return ResultImage(index, count, seed + index, 2, 2, bytes([index]) * 16)


def test_the_first_variation_is_shown_as_soon_as_it_arrives_and_the_others_wait_in_the_strip():
    board = PreviewBoard()
    choice = board.expect("k1", 3)
    show, retired = board.arrived("k1", variation(0))
    assert show and retired is None and board.current is choice
    assert choice.shown_result().seed == 40 and choice.waiting_for == 2
    assert board.arrived("k1", variation(1)) == (False, None)
    assert board.arrived("k1", variation(2)) == (False, None)
    assert choice.shown == 0 and [r.seed for r in choice.results] == [40, 41, 42] and choice.waiting_for == 0


def test_previewing_the_second_then_applying_gives_exactly_that_variation_and_empties_the_strip():
    board = PreviewBoard()
    board.expect("k1", 3)
    for i in range(3):
        board.arrived("k1", variation(i))
    assert board.select(1).seed == 41
    choice, applied = board.apply()
    assert applied.seed == 41 and choice.state == APPLIED
    assert board.current is None and board.get("k1") is None
    with pytest.raises(PreviewError, match="generate first"):
        board.apply()


def test_discard_closes_the_choice_and_nothing_can_be_applied_from_it_afterwards():
    board = PreviewBoard()
    choice = board.expect("k1", 2)
    board.arrived("k1", variation(0, 2))
    assert board.discard() is choice and choice.state == DISCARDED and choice.shown is None
    assert board.current is None
    with pytest.raises(PreviewError, match="already discarded"):
        choice.apply()
    assert board.arrived("k1", variation(1, 2)) == (False, None)  # a late variation of a discarded job is ignored


def test_a_variation_that_has_not_arrived_cannot_be_picked():
    board = PreviewBoard()
    board.expect("k1", 3)
    board.arrived("k1", variation(0))
    with pytest.raises(PreviewError, match="no variation 3: 1 of 3 have arrived"):
        board.select(2)


def test_an_earlier_index_arriving_late_keeps_the_same_variation_on_the_canvas():
    board = PreviewBoard()
    choice = board.expect("k1", 3)
    board.arrived("k1", variation(1))
    board.arrived("k1", variation(0))
    assert choice.shown_result().index == 1 and [r.index for r in choice.results] == [0, 1]


def test_a_newer_jobs_first_variation_retires_the_older_choice():
    board = PreviewBoard()
    old = board.expect("k1", 1)
    board.arrived("k1", variation(0, 1))
    new = board.expect("k2", 2)
    assert board.current is old  # the strip keeps the old one until the new job brings something
    show, retired = board.arrived("k2", variation(0, 2, seed=7))
    assert show and retired is old and old.state == RETIRED and board.current is new


def test_a_job_that_ended_without_any_variation_leaves_no_choice_and_a_finished_one_waits_for_the_painter():
    board = PreviewBoard()
    board.expect("failed", 2)
    assert board.ended("failed", "failed") is None and board.get("failed") is None
    choice = board.expect("short", 3)
    board.arrived("short", variation(0))
    assert board.ended("short", "cancelled") is choice and choice.finished and choice.waiting_for == 0
