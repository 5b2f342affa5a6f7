"""The daemon's box of results sent from the panel (server/offers.py): only the editor an offer went to can answer
it, an editor that never comes back does not pile offers up, and who can take an offer now."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bridge_server.server.offers import KEPT_PER_CLIENT, OfferBox, OfferRefused, check_target, target_view


def test_only_the_editor_an_offer_went_to_can_answer_it():
    box = OfferBox()
    offer = box.add("krita-1", "ab" * 16 + "-0", "krita", "", connected=True)
    assert box.done("gimp-1", offer.offer_id, True, "mine now", "x.xcf") is None  # another editor: ignored
    assert box.for_client("krita-1") == [offer] and offer.state == "sent"
    done = box.done("krita-1", offer.offer_id, True, "inserted", "cat.kra")
    assert done is offer and offer.state == "inserted" and offer.inserted_into == "cat.kra"
    assert box.for_client("krita-1") == []
    assert box.done("krita-1", offer.offer_id, False, "again", "") is None  # answered once


def test_offers_for_an_editor_that_never_returns_are_bounded_and_the_newest_kept():
    box = OfferBox()
    offers = [box.add("gimp-1", f"{i:032x}-0", "gimp", "", connected=False) for i in range(KEPT_PER_CLIENT + 5)]
    kept = box.for_client("gimp-1")
    assert len(kept) == KEPT_PER_CLIENT and kept[-1] is offers[-1] and kept[0] is offers[5]
    assert all(o.state == "kept" for o in kept)
    assert box.views()[0]["offer_id"] == offers[-1].offer_id  # the panel lists the newest first


def session(offers: str, connected: bool, editor: str = "krita") -> SimpleNamespace:
    return SimpleNamespace(
        client_id="c1",
        editor=editor,
        client_name=f"{editor}-plugin",
        offers=offers,
        connection=object() if connected else None,
        documents=[{"key": "k", "name": "cat.kra", "active": True}],
    )


def test_who_can_take_a_result_now():
    check_target(session("live", True))
    check_target(session("later", False, "gimp"))  # kept for its next run
    with pytest.raises(OfferRefused, match="Krita is not connected") as gone:
        check_target(session("live", False))
    assert gone.value.code == "not_connected" and gone.value.status == 409
    with pytest.raises(OfferRefused, match="ace-bridge install gimp") as old:
        check_target(session("", True, "gimp"))
    assert old.value.code == "not_supported"
    assert target_view(session("later", False, "gimp"))["documents"] == []  # a closed editor's list is stale
    assert target_view(session("bogus", True))["mode"] == ""


def test_a_documents_frame_keeps_only_key_name_and_active():
    from ace_protocol.errors import ProtocolError
    from ace_protocol.messages import MAX_DOCUMENTS, Documents

    wire = {"type": "documents", "documents": [{"key": "k", "name": "cat.kra", "active": 1, "blob": "x" * 4000}]}
    assert Documents.from_wire(wire).documents == [{"key": "k", "name": "cat.kra", "active": False}]
    for bad in ([{"key": 5}], ["cat.kra"], [{"name": "n" * 257}], [{}] * (MAX_DOCUMENTS + 1)):
        with pytest.raises(ProtocolError):
            Documents.from_wire({"type": "documents", "documents": bad})
