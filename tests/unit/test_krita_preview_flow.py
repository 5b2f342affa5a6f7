"""The Krita preview flow (plugins_krita/ace_bridge/previews.py) when Krita turns the event loop while it adds the
first preview layer: `Node.addChildNode` waits for the image, and Krita's busy wait processes events meanwhile, so
the job's end and the painter's Apply (or Discard) can come before the layer is in the stack. PyQt6 offscreen; the
document is a small in-memory double of libkis's Document/Node (the real one runs in tests/editors)."""

from __future__ import annotations

import importlib
import os
import sys
import types
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from ace_protocol.images import ImagePayload
from ace_protocol.messages import Result

pytest.importorskip("PyQt6.QtWidgets", reason="pip install PyQt6 (with torch pinned) to test the Krita 6 path")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins_krita"))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

W, H = 8, 4
EXCHANGE = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")


class FakeUuid:
    def __init__(self, text: str) -> None:
        self.text = text

    def toString(self) -> str:  # noqa: N802 - libkis's name
        return self.text


class FakeNode:
    def __init__(self, doc: FakeDocument, name: str) -> None:
        self.doc, self._name, self._id = doc, name, "{" + str(uuid.uuid4()) + "}"
        self.parent: FakeNode | None = None
        self.children: list[FakeNode] = []
        self.pixels = b""

    def uniqueId(self) -> FakeUuid:  # noqa: N802
        return FakeUuid(self._id)

    def name(self) -> str:
        return self._name

    def setName(self, name: str) -> None:  # noqa: N802
        self._name = name

    def setPixelData(self, data: bytes, x: int, y: int, w: int, h: int) -> None:  # noqa: N802
        self.pixels = bytes(data)

    def childNodes(self) -> list[FakeNode]:  # noqa: N802
        return list(self.children)

    def parentNode(self) -> FakeNode | None:  # noqa: N802
        return self.parent

    def addChildNode(self, child: FakeNode, above: FakeNode | None) -> bool:  # noqa: N802
        # Like Krita: the add is a stroke the call waits for, turning the event loop while the image is busy.
        self.doc.busy_wait()
        at = self.children.index(above) + 1 if above in self.children else len(self.children)
        self.children.insert(at, child)
        child.parent = self
        return True

    def remove(self) -> bool:
        if self.parent is None:
            return False
        self.parent.children.remove(self)
        self.parent = None
        return True


class FakeDocument:
    def __init__(self) -> None:
        self.root = FakeNode(self, "root")
        background = FakeNode(self, "Background")
        background.parent = self.root
        self.root.children.append(background)
        self.annotations: dict[str, bytes] = {}
        self.during_busy_wait: list[Callable[[], None]] = []  # what the event loop delivers during the next wait

    def busy_wait(self) -> None:
        pending, self.during_busy_wait = self.during_busy_wait, []
        for event in pending:
            event()

    def createNode(self, name: str, kind: str) -> FakeNode:  # noqa: N802
        return FakeNode(self, name)

    def rootNode(self) -> FakeNode:  # noqa: N802
        return self.root

    def annotation(self, key: str) -> bytes:
        return self.annotations.get(key, b"")

    def setAnnotation(self, key: str, description: str, data: bytes) -> None:  # noqa: N802
        self.annotations[key] = bytes(data)

    def colorModel(self) -> str:  # noqa: N802
        return EXCHANGE[0]

    def colorDepth(self) -> str:  # noqa: N802
        return EXCHANGE[1]

    def colorProfile(self) -> str:  # noqa: N802
        return EXCHANGE[2]

    def refreshProjection(self) -> None:  # noqa: N802
        pass

    def names(self) -> list[str]:
        return [n.name() for n in self.root.children]


@pytest.fixture(scope="module")
def previews():
    """ace_bridge.previews on PyQt6, its `krita` import answered by a stub with no open documents (so the flow
    uses the document it kept at submit time)."""
    saved = {k: os.environ.get(k) for k in ("ACE_BRIDGE_QT", "ACE_BRIDGE_NO_REGISTER")}
    os.environ.update(ACE_BRIDGE_QT="6", ACE_BRIDGE_NO_REGISTER="1")
    stub = types.ModuleType("krita")
    for name in ("DockWidget", "DockWidgetFactory", "DockWidgetFactoryBase", "Extension"):
        setattr(stub, name, type(name, (), {}))
    stub.Krita = type(
        "Krita", (), {"instance": staticmethod(lambda: types.SimpleNamespace(documents=list, version=lambda: "5.2.9"))}
    )
    old_krita = sys.modules.get("krita")
    sys.modules["krita"] = stub
    fresh = [m for m in sys.modules if m.startswith("ace_bridge.")]
    for name in fresh:
        del sys.modules[name]
    qt_compat = importlib.import_module("ace_bridge.qt_compat")
    app = qt_compat.QtWidgets.QApplication.instance() or qt_compat.QtWidgets.QApplication(["test"])
    assert app is not None
    module = importlib.import_module("ace_bridge.previews")
    yield module
    for name in [m for m in sys.modules if m.startswith("ace_bridge.")]:
        del sys.modules[name]
    if old_krita is None:
        sys.modules.pop("krita", None)
    else:
        sys.modules["krita"] = old_krita
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def a_job(previews, doc: FakeDocument, count: int = 1):
    model = importlib.import_module("ace_bridge.model")
    flow = previews.PreviewFlow()
    record = model.JobRecord("k1", "doc-1", "local_edit", "make it green", {}, (0, 0, W, H), "image", None)
    flow.expect("k1", record, doc, count)
    return flow, record


def variation(index: int, count: int = 1, seed: int = 5) -> Result:
    rgba = bytes((index * 40, 200, 30, 255)) * (W * H)
    return Result(job_id="job-1", index=index, count=count, seed=seed, image=ImagePayload(W, H, "rgba8", rgba))


def test_apply_while_krita_still_adds_the_preview_layer_gives_one_result_layer(previews):
    doc = FakeDocument()
    flow, record = a_job(previews, doc)
    ended = result_of(variation(0))
    applied = []

    def job_ends_and_painter_applies():
        flow.ended("k1", "done", [ended])
        assert flow.shows(record)  # the strip waits for the pick: the history's "Apply again" uses the strip
        applied.append(flow.apply())

    doc.during_busy_wait.append(job_ends_and_painter_applies)
    flow.on_event("k1", variation(0))
    assert doc.names()[0] == "Background"
    assert len(doc.names()) == 2, doc.names()
    assert doc.names()[1].startswith("[ACE++] local_edit") and "seed 5" in doc.names()[1]
    assert applied == [doc.root.children[1].uniqueId().toString()] == record.layer_ids
    assert not flow.shows(record)


def test_discard_while_krita_still_adds_the_preview_layer_leaves_the_stack_as_before(previews):
    doc = FakeDocument()
    flow, record = a_job(previews, doc, count=2)
    doc.during_busy_wait.append(flow.discard)
    flow.on_event("k1", variation(0, count=2))
    assert doc.names() == ["Background"]
    flow.on_event("k1", variation(1, count=2))  # a later variation of the discarded job changes nothing
    assert doc.names() == ["Background"]
    assert not flow.shows(record)


def test_a_thumbnail_picked_while_krita_adds_the_layer_is_what_the_layer_shows(previews):
    doc = FakeDocument()
    flow, record = a_job(previews, doc, count=2)
    doc.during_busy_wait.append(lambda: flow.on_event("k1", variation(1, count=2, seed=6)))
    doc.during_busy_wait.append(lambda: flow.select(1))
    flow.on_event("k1", variation(0, count=2))
    assert len(doc.names()) == 2 and "seed 6" in doc.names()[1] and doc.names()[1].startswith("[ACE++ preview]")
    assert flow.shows(record)
    flow.apply()
    assert len(doc.names()) == 2 and doc.names()[1].startswith("[ACE++] local_edit") and "seed 6" in doc.names()[1]


def result_of(event: Result):
    """The ResultImage the job's end carries for an arrived `Result` (what jobs.run_job collects)."""
    from ace_editor.jobs import ResultImage, decode_raw

    width, height, rgba = decode_raw(event.image)
    return ResultImage(event.index, event.count, event.seed, width, height, rgba, dict(event.provenance))
