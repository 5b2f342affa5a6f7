"""Preview, then apply, in Krita: the strip of thumbnails in the docker and the temporary preview layer.

The state (which variations wait, which is shown) is ace_editor.previews'; this module only draws it. Each
variation of a job arrives as its `Result` event; the first one goes on the canvas at once as a layer named
`[ACE++ preview] …` above the source (where the result layer would go). Picking another thumbnail rewrites that
layer's pixels (not an undo step). Apply renames the layer into the result layer and records its provenance, so
the painter's undo history holds one step for it: the layer's addition. Discard removes the layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import document as kdoc
from . import layers
from .bundled import geometry, messages, naming, provenance
from .bundled import previews as choices
from .model import PROVENANCE_ANNOTATION, JobRecord, ProvenanceStore, ResultImage, Source, layer_name
from .qt_compat import (
    FORMAT_RGBA8888,
    ICON_MODE,
    KEEP_ASPECT,
    SMOOTH,
    QIcon,
    QObject,
    QPixmap,
    QtWidgets,
    Signal,
    qimage_from_bytes,
)
from .worker import decode_result

THUMB = 72
PREVIEW_PREFIX = "[ACE++ preview]"


def preview_name(record: JobRecord, result: ResultImage) -> str:
    """`[ACE++ preview] local_edit: make it green (seed 5) #2/3`: clearly not a result yet."""
    name = layer_name(record.task, record.prompt, result.seed, result.index, result.count)
    return name.replace(naming.LAYER_PREFIX, PREVIEW_PREFIX, 1)


@dataclass
class _Job:
    record: JobRecord
    doc: Any  # the document wrapper at submit time (fallback when the document id is not found)
    layer_id: str | None = None  # the preview layer on the canvas
    # The preview layer while Krita adds it: addChildNode waits for the image and turns the event loop meanwhile
    # (Krita's busy wait), so the job's end, the painter's Apply or Discard, or a newer job can come in between,
    # before the layer is found in the document.
    adding: Any = None


class PreviewFlow(QObject):
    """Follows the variations of the jobs sent in preview mode and keeps the canvas in step with the choice."""

    changed = Signal()  # the strip must be redrawn
    status = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.board = choices.PreviewBoard()
        self._jobs: dict[str, _Job] = {}
        self._taken: set[str] = set()  # every job sent in preview mode, also after its Apply or Discard

    # ------------------------------------------------------------------ from the controller
    def expect(self, local_id: str, record: JobRecord, doc: Any, count: int) -> None:
        self.board.expect(local_id, count)
        self._jobs[local_id] = _Job(record, doc)
        self._taken.add(local_id)

    def takes(self, local_id: str) -> bool:
        """The job's results go through the strip (not inserted at once), even when the painter applied or
        discarded its first variation before the job ended."""
        return local_id in self._taken

    def on_event(self, local_id: str, event: Any) -> None:
        """Every job event (connected to the worker): a `Result` is one more variation."""
        if local_id not in self._jobs or not isinstance(event, messages.Result):
            return
        try:
            result = _decoded(event)
        except ValueError as exc:
            self.status.emit(f"Could not show variation {event.index + 1}: {exc}")
            return
        show, retired = self.board.arrived(local_id, result)
        if retired is not None:
            self._remove_layer(retired.key)
        if show:
            self._show(local_id, result)
        self.changed.emit()

    def ended(self, local_id: str, state: str, results: list[ResultImage]) -> None:
        """The job ended; results that never came as their own event (a redelivery) are added now."""
        job = self._jobs.get(local_id)
        if job is None:
            return
        choice = self.board.get(local_id)
        have = {r.index for r in choice.results} if choice is not None else set()
        for result in results:
            if result.index not in have and choice is not None and choice.is_open:
                show, retired = self.board.arrived(local_id, result)
                if retired is not None:
                    self._remove_layer(retired.key)
                if show:
                    self._show(local_id, result)
        if self.board.ended(local_id, state) is None and self.board.get(local_id) is None:
            self._remove_layer(local_id)
        self.changed.emit()

    def shows(self, record: JobRecord) -> bool:
        """The strip still waits for the painter's pick among this job's variations."""
        current = self.board.current
        job = self._jobs.get(current.key) if current is not None and current.is_open else None
        return job is not None and job.record is record

    # ------------------------------------------------------------------ the painter's picks
    def select(self, position: int) -> ResultImage:
        result = self.board.select(position)
        current = self.board.current
        assert current is not None  # select() raised otherwise
        self._show(current.key, result)
        self.changed.emit()
        return result

    def apply(self) -> str | None:
        """The shown variation becomes the result layer; returns its uniqueId."""
        choice, result = self.board.apply()
        job = self._jobs.pop(choice.key)
        doc = self._document(job)
        node = self._node(job, doc) if doc is not None else None
        if doc is None:
            self.status.emit("The document of this preview is closed.")
            self.changed.emit()
            return None
        if node is None:  # the painter undid the preview layer meanwhile: put the result back
            node = self._add_layer(job, doc, result)
        node.setName(layer_name(job.record.task, job.record.prompt, result.seed))
        record = job.record
        store = ProvenanceStore.from_bytes(doc.annotation(PROVENANCE_ANNOTATION))
        store.add(
            kdoc.node_id(node),
            provenance.provenance_record(
                record.task,
                record.prompt,
                result.seed,
                record.params,
                record.region,
                record.source,
                record.job_id,
                result.provenance,
                result.index,
                result.count,
            ),
        )
        doc.setAnnotation(PROVENANCE_ANNOTATION, "ACE Bridge provenance (JSON)", store.to_bytes())
        record.layer_ids = [kdoc.node_id(node)]
        self.status.emit(f"Applied variation {choice.results.index(result) + 1}, seed {result.seed}.")
        self.changed.emit()
        return kdoc.node_id(node)

    def discard(self) -> None:
        choice = self.board.discard()
        self._remove_layer(choice.key)
        self._jobs.pop(choice.key, None)
        self.status.emit("Discarded the variations.")
        self.changed.emit()

    # ------------------------------------------------------------------ the canvas
    def _document(self, job: _Job) -> Any:
        return kdoc.find_document(job.record.doc_key, fallback=job.doc)

    def _show(self, local_id: str, result: ResultImage) -> None:
        job = self._jobs[local_id]
        doc = self._document(job)
        if doc is None:
            return
        node = self._node(job, doc)
        if node is None:
            self._add_layer(job, doc, result)
            return
        region = geometry.Bounds(*job.record.region)
        layers.write_pixels(doc, node, result, region)
        node.setName(preview_name(job.record, result))
        doc.refreshProjection()

    def _add_layer(self, job: _Job, doc: Any, result: ResultImage) -> Any:
        region = geometry.Bounds(*job.record.region)
        node = layers.new_result_layer(doc, preview_name(job.record, result), result, region)
        job.layer_id, job.adding = kdoc.node_id(node), node  # known before Krita's add turns the event loop
        try:
            layers.add_above_source(doc, node, Source(job.record.source), job.record.anchor_node)
        finally:
            job.adding = None
        if job.layer_id != kdoc.node_id(node):  # discarded or retired while it was being added
            node.remove()
        doc.refreshProjection()
        return node

    def _node(self, job: _Job, doc: Any) -> Any:
        """The job's preview layer: in the document, or the one Krita is still adding."""
        node = kdoc.find_node(doc, job.layer_id)
        return job.adding if node is None else node

    def _remove_layer(self, local_id: str) -> None:
        job = self._jobs.get(local_id)
        if job is None or job.layer_id is None:
            return
        doc = self._document(job)
        node = self._node(job, doc) if doc is not None else None
        if node is not None:
            node.remove()
            doc.refreshProjection()
        job.layer_id = None
        if self.board.get(local_id) is None:
            self._jobs.pop(local_id, None)


def _decoded(event: Any) -> ResultImage:
    width, height, rgba = decode_result(event.image)
    return ResultImage(event.index, event.count, event.seed, width, height, rgba, dict(event.provenance or {}))


def thumbnail(result: ResultImage, side: int = THUMB) -> Any:
    img = qimage_from_bytes(result.rgba, result.width, result.height, FORMAT_RGBA8888)
    return QPixmap.fromImage(img).scaled(side, side, KEEP_ASPECT, SMOOTH)


class PreviewStrip(QtWidgets.QGroupBox):
    """The thumbnails of the current choice with Apply and Discard; hidden while nothing waits."""

    def __init__(self, flow: PreviewFlow, parent: Any = None) -> None:
        super().__init__("Variations", parent)
        self.flow = flow
        W = QtWidgets
        box = W.QVBoxLayout(self)
        self.thumbs = W.QListWidget()
        self.thumbs.setViewMode(ICON_MODE)
        self.thumbs.setIconSize(QPixmap(THUMB, THUMB).size())
        self.thumbs.setMinimumHeight(THUMB + 28)
        self.thumbs.setToolTip("Click a variation to preview it on the canvas")
        self.thumbs.currentRowChanged.connect(self._on_row)
        box.addWidget(self.thumbs)
        self.info = W.QLabel("")
        box.addWidget(self.info)
        row = W.QHBoxLayout()
        self.apply_button = W.QPushButton("Apply")
        self.apply_button.setToolTip("Keep the previewed variation as a layer (one undo step)")
        self.apply_button.clicked.connect(self.on_apply)
        self.discard_button = W.QPushButton("Discard")
        self.discard_button.setToolTip("Remove the preview; the document stays as it was")
        self.discard_button.clicked.connect(self.on_discard)
        row.addWidget(self.apply_button, 1)
        row.addWidget(self.discard_button)
        box.addLayout(row)
        flow.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        choice = self.flow.board.current
        self.thumbs.blockSignals(True)
        self.thumbs.clear()
        if choice is not None:
            for result in choice.results:
                item = QtWidgets.QListWidgetItem(QIcon(thumbnail(result)), f"{result.seed}")
                item.setToolTip(f"seed {result.seed}")
                self.thumbs.addItem(item)
            if choice.shown is not None:
                self.thumbs.setCurrentRow(choice.shown)
        self.thumbs.blockSignals(False)
        if choice is None:
            self.info.setText("")
        else:
            waiting = choice.waiting_for
            shown = "" if choice.shown is None else f"showing {choice.shown + 1} of {len(choice.results)}"
            self.info.setText(shown + (f"; {waiting} more coming…" if waiting else ""))
        self.setVisible(choice is not None)

    def count(self) -> int:
        return self.thumbs.count()

    def _on_row(self, row: int) -> None:
        if row >= 0:
            self.pick(row)

    def pick(self, position: int) -> None:
        try:
            self.flow.select(position)
        except choices.PreviewError as exc:
            self.flow.status.emit(str(exc))

    def on_apply(self) -> str | None:
        try:
            return self.flow.apply()
        except choices.PreviewError as exc:
            self.flow.status.emit(str(exc))
            return None

    def on_discard(self) -> None:
        try:
            self.flow.discard()
        except choices.PreviewError as exc:
            self.flow.status.emit(str(exc))


def expected_count(task: dict[str, Any], params: dict[str, Any]) -> int:
    """How many variations a job brings: its `count`, or the task's default when the box was left at default."""
    if params.get("count"):
        return int(params["count"])
    spec = next((p for p in task.get("params", ()) if isinstance(p, dict) and p.get("name") == "count"), None)
    default = spec.get("default") if spec else None
    return int(default) if isinstance(default, (int, float)) and default >= 1 else 1
