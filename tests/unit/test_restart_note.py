"""Editors show why a job is queued again: `queued.note` (a replica died under it, serve --ray) in the status line."""

from __future__ import annotations

from ace_editor.jobs import status_text
from ace_protocol.codec import decode_server_message, encode
from ace_protocol.messages import Queued


def test_the_restart_note_reaches_the_status_line():
    event = decode_server_message(encode(Queued(job_id="j", position=0, note="restarted on another GPU (killed)")))
    assert event.note == "restarted on another GPU (killed)"
    assert status_text(event) == "restarted on another GPU (killed); waiting: next in line"
    assert status_text(Queued(job_id="j", position=2)) == "Queued: position 2"
