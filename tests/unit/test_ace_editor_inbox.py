"""ace_editor.inbox: where a result sent from the panel goes (which open document, where on it, under what name),
and that the daemon always hears back, also when the editor cannot take it."""

from __future__ import annotations

import pytest
from ace_editor import inbox
from ace_protocol.client import DaemonNotRunning
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Documents, Offer

CAT = inbox.OpenDocument("k-cat", "cat.kra", width=100, height=80)
DOG = inbox.OpenDocument("k-dog", "/home/me/art/dog.kra", active=True, width=300, height=200)
DOCS = [CAT, DOG]


def item(width=40, height=20, document="", label="", **provenance) -> inbox.Delivery:
    return inbox.Delivery("o1", "ab" * 16 + "-0", width, height, bytes(width * height * 4), document, label, provenance)


def test_the_document_the_user_picked_wins_by_key_then_by_name():
    assert inbox.choose_document(item(document="k-cat"), DOCS) is CAT
    assert inbox.choose_document(item(document="DOG.kra"), DOCS) is DOG  # a name, any folder, any case


def test_without_a_pick_the_result_goes_home_else_to_the_active_document():
    assert inbox.choose_document(item(label="cat.kra"), DOCS) is CAT
    assert inbox.choose_document(item(label="GIMP: dog.kra"), DOCS) is DOG  # GIMP's labels carry a prefix
    assert inbox.choose_document(item(label="gone.kra"), DOCS) is DOG  # the active one
    assert inbox.choose_document(item(document="closed.kra"), [CAT]) is CAT  # nothing active: the first
    assert inbox.choose_document(item(), []) is None


def test_placement_uses_the_documents_own_record_of_the_region_else_centres_it():
    job = "ab" * 16
    records = [{"job_id": job, "region": [7, 9, 40, 20]}, {"job_id": "other", "region": [0, 0, 1, 1]}, {"x": 1}]
    regions = inbox.regions_from_provenance(records)
    assert inbox.placement(item(job_id=job), DOG, regions) == (7, 9, 40, 20)
    assert inbox.placement(item(job_id=job, width=41), DOG, regions) == ((300 - 41) // 2, (200 - 20) // 2, 41, 20)
    assert inbox.placement(item(width=300, height=200), DOG) == (0, 0, 300, 200)  # the whole canvas
    assert inbox.placement(item(width=400, height=400), DOG)[:2] == (-50, -100)  # larger: centred, overhanging


def test_the_layer_name_says_it_came_from_the_panel():
    named = item(task="local_edit", prompt="make the hat red in {image}.", seed=42)
    assert named.layer_name() == "[ACE++] local_edit from panel: make the hat red (seed 42)"
    assert item().layer_name() == "[ACE++] result from panel"
    assert item().job_id == "ab" * 16


class Recorder:
    """The client's side of the answer, as the daemon would receive it."""

    def __init__(self, fail: bool = False) -> None:
        self.answers: list[tuple] = []
        self.fail = fail

    def offer_done(self, offer_id, ok, message="", document=""):
        if self.fail:
            raise DaemonNotRunning("ws://127.0.0.1:9/v1/ws", "gone")
        self.answers.append((offer_id, ok, message, document))


def offer(width=2, height=1) -> Offer:
    pixels = bytes(range(width * height * 4))
    return Offer(offer_id="o7", entry="cd" * 16 + "-1", image=ImagePayload(width, height, "rgba8", pixels))


def test_deliver_inserts_and_answers_with_the_document():
    client = Recorder()
    got: list[inbox.Delivery] = []

    def insert(delivery):
        got.append(delivery)
        return "cat.kra"

    assert inbox.deliver(client, offer(), insert) == (
        True,
        "Inserted the result from the panel into cat.kra as a new layer.",
    )
    assert got[0].rgba == bytes(range(8)) and (got[0].width, got[0].height) == (2, 1)
    assert client.answers == [
        ("o7", True, "Inserted the result from the panel into cat.kra as a new layer.", "cat.kra")
    ]


@pytest.mark.parametrize("fail_answer", [False, True])
def test_a_refused_insert_is_answered_not_raised(fail_answer):
    client = Recorder(fail=fail_answer)

    def insert(delivery):
        raise inbox.NoDocument("Krita")

    ok, message = inbox.deliver(client, offer(), insert)
    assert not ok and message.startswith("No document is open in Krita")
    assert client.answers == ([] if fail_answer else [("o7", False, message, "")])


def test_take_waiting_does_nothing_for_a_daemon_without_offers():
    class Old:
        takes_offers = False

        def offers(self, wait=0.0):  # pragma: no cover - must not be called
            raise AssertionError

    assert inbox.take_waiting(Old(), lambda d: "x") == []


def test_documents_go_on_the_wire_as_key_name_and_active():
    assert inbox.documents_wire(DOCS) == [
        {"key": "k-cat", "name": "cat.kra", "active": False},
        {"key": "k-dog", "name": "/home/me/art/dog.kra", "active": True},
    ]


def test_a_label_that_names_document_and_region_sends_the_result_home_to_its_place():
    labelled = item(label="GIMP: cat.kra at 12,30 40x20")
    assert labelled.home == "cat.kra" and labelled.home_region == (12, 30, 40, 20)
    assert inbox.choose_document(labelled, DOCS) is CAT
    assert inbox.placement(labelled, CAT) == (12, 30, 40, 20)
    # Into another document (the user's pick), the home region means nothing there: centred.
    assert inbox.placement(item(document="k-dog", label="GIMP: cat.kra at 12,30 40x20"), DOG) == (130, 90, 40, 20)


def test_a_long_key_travels_as_a_digest_that_still_finds_its_document():
    deep = inbox.OpenDocument("/very/" * 40 + "deep.kra", "deep.kra", width=10, height=10)
    wire = inbox.documents_wire([deep])[0]
    assert len(wire["key"]) <= inbox.KEY_MAX and wire["key"].startswith("sha256:")
    Documents(documents=[wire])  # within the protocol's limits
    assert inbox.choose_document(item(document=wire["key"]), [CAT, deep]) is deep
