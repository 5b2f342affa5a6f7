"""The ACE++ docker: a `Controller` (state and the Generate/Cancel flow, no widgets) and the `AceBridgeDocker` UI.

The controller reads the document through document.py, sends through the worker, and on `done` writes the result
into the document the job came from (found by the id stored in it, whatever document is active by then).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from . import document as kdoc
from . import history_store, layers
from .bundled import daemon, forms, geometry, history, jobs, messages, panel_link, prompting, provenance
from .expand import fit_canvas, read_grown, wanted_margins
from .firstrun import FirstRun, FirstRunPanel
from .inbox import KritaInbox
from .model import JobRecord, Settings, Source, docker_fields, option_fields
from .previews import PreviewFlow, PreviewStrip, expected_count
from .prompt_box import PromptBox
from .qt_compat import (
    ALIGN_CENTER,
    FORMAT_RGBA8888,
    ICON_MODE,
    KEEP_ASPECT,
    PASSWORD_ECHO,
    SMOOTH,
    USER_ROLE,
    QIcon,
    QObject,
    QPixmap,
    QtCore,
    QtGui,
    QtWidgets,
    Signal,
    preview_pixmap,
    qimage_from_bytes,
)
from .sliders import FractionSlider
from .worker import BridgeWorker

THUMB = 64
PREVIEW_SIDE = 160  # the live preview in the docker, long side


@dataclass
class Pending:
    record: JobRecord
    spec: jobs.JobRequest
    doc: Any  # the wrapper at submit time: fallback if the document id cannot be found


class Controller(QObject):
    """Everything the docker does, callable without widgets (the GUI tests drive it directly)."""

    status_changed = Signal(str)
    progress_changed = Signal(int, int)  # step, total (0, 0 = idle/indeterminate)
    preview_changed = Signal(object)  # JPEG bytes of the running job's latest preview; b"" = none (hide it)
    connection_changed = Signal(str, str)
    tasks_changed = Signal(object)
    history_changed = Signal()
    job_finished = Signal(str, str)  # local id, final state (done|failed|cancelled)

    def __init__(self, settings: Settings, worker: BridgeWorker | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.worker = worker or BridgeWorker(
            settings.url, settings.token, settings.client_id, editor=f"krita {kdoc.krita_version()}"
        )
        self.tasks: dict[str, dict] = {}
        self.pending: dict[str, Pending] = {}
        self.history = history.History()
        self._ids = itertools.count(1)
        self.worker.connection_changed.connect(self._on_connection)
        self.worker.welcome_received.connect(self._on_welcome)
        self.worker.job_event.connect(self._on_job_event)
        self.worker.redelivered.connect(self._on_redelivered)
        self.inbox = KritaInbox(self.worker)  # results sent from the panel land as new layers (inbox.py)
        self.inbox.status.connect(self.status_changed.emit)
        # Preview, then apply (previews.py): a job's variations wait in the docker's strip, the shown one as a
        # preview layer; with preview_first off they are inserted at once, as before.
        self.preview_first = True
        self.previews = PreviewFlow()
        self.worker.job_event.connect(self.previews.on_event)
        self.expand_text = ""  # the docker's "Expand canvas" margins, L,T,R,B (empty: only a selection past the edge)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()

    # ------------------------------------------------------------------ flow
    def generate(
        self,
        doc=None,
        instruction: str = "",
        task: str | None = None,
        reference_ids: tuple = (),
        overrides: dict | None = None,
        advanced: bool = False,
    ) -> str | None:
        """Read the document, submit a job; returns its local id (None if nothing could be sent).

        `instruction` is what the painter typed; painter_prompt makes the task's ACE++ prompt of it (`advanced`:
        sent as typed). A local edit's picked layer is its control image, read over the edit's region."""
        doc = doc or kdoc.active_document()
        if doc is None:
            self.status_changed.emit("Open a document first.")
            return None
        s = self.settings
        task = task or s.task
        spec_table = self.tasks.get(task)
        if spec_table is None:
            self.status_changed.emit(
                f"The daemon does not offer the task '{task}'."
                if self.tasks
                else "Not connected to the ACE Bridge daemon."
            )
            return None
        source = Source(s.source)
        padding = None if s.padding < 0 else s.padding
        control = spec_table.get("reference_kind") == "control"
        read = kdoc.read_context(doc, source, padding, list(reference_ids), control=control)
        # Expand: a selection past the canvas (or margins typed in the docker) grows it; the new area is the mask.
        try:
            grow = wanted_margins(doc, spec_table, self.expand_text)
        except ValueError as exc:
            self.status_changed.emit(f"Expand canvas: {exc}")
            return None
        if grow is not None:
            read = read_grown(doc, grow, read)
        if spec_table.get("needs_selection") and read.mask is None:
            self.status_changed.emit("This task needs a selection: select the area to change first.")
            return None
        if len(read.references) < spec_table.get("min_references", 0):
            self.status_changed.emit("This task needs a reference layer: pick one in the docker.")
            return None
        values = s.param_values(jobs.pick_seed(s.seed_mode, s.seed))
        values.update(overrides or {})
        params = forms.params_from(spec_table, values)  # boxes left at "default" are left out: the daemon decides
        params = forms.with_control_mode(spec_table, params, bool(read.references))
        prompt = prompting.painter_prompt(
            task, instruction, advanced=advanced, mode=params.get("mode"), template=spec_table.get("prompt_template")
        )
        local_id = f"k{next(self._ids)}"
        region = tuple(read.region)
        record = JobRecord(local_id, read.doc_key, task, prompt, params, region, source.value, read.anchor_node)
        record.instruction = instruction.strip()
        spec = jobs.JobRequest(
            local_id,
            task,
            prompt,
            read.image if spec_table.get("needs_image", True) else None,
            read.mask,
            read.references,
            params,
            label=doc.name() or "krita",
        )
        if self.preview_first and grow is None:  # an expansion is inserted at once, with the grown canvas
            self.previews.expect(local_id, record, doc, expected_count(spec_table, params))
        self.pending[local_id] = Pending(record, spec, doc)
        self.history.add(record)
        self.status_changed.emit("Sending…")
        self.progress_changed.emit(0, 0)
        self.worker.submit(spec)
        return local_id

    def cancel(self, local_id: str | None = None) -> None:
        ids = [local_id] if local_id else list(self.pending)
        for lid in ids:
            self.worker.cancel(lid)
        if ids:
            self.status_changed.emit("Cancelling…")

    def apply(self, record: JobRecord, doc=None) -> list[str]:
        """Insert a finished job's results into its own document (or `doc`); returns the new layer ids."""
        target = doc or kdoc.find_document(record.doc_key)
        if target is None:
            target = kdoc.active_document()
        if target is None or not record.results:
            return []
        seed = record.results[0].seed
        records = [
            provenance.provenance_record(
                record.task,
                record.prompt,
                r.seed,
                record.params,
                record.region,
                record.source,
                record.job_id,
                r.provenance,
                r.index,
                r.count,
            )
            for r in sorted(record.results, key=lambda r: r.index)
        ]
        # An expansion grows the canvas first; its region is then kept in the grown canvas's coordinates, so
        # applying it again does not grow the canvas twice.
        region = fit_canvas(target, geometry.Bounds(*record.region))
        record.region = tuple(region)
        ids = layers.insert_results(
            target,
            record.results,
            region,
            Source(record.source),
            record.anchor_node,
            record.task,
            record.prompt,
            records,
        )
        record.layer_ids = ids
        self.status_changed.emit(f"Inserted {len(record.results)} result(s), seed {seed}.")
        return ids

    # ------------------------------------------------------------------ events
    def _on_connection(self, state: str, message: str) -> None:
        self.connection_changed.emit(state, message)

    def _on_welcome(self, welcome: dict) -> None:
        self.tasks = {t["name"]: t for t in welcome.get("tasks", []) if isinstance(t, dict) and "name" in t}
        self.tasks_changed.emit(self.tasks)

    def _on_job_event(self, local_id: str, event: Any) -> None:
        pending = self.pending.get(local_id)
        if pending is None:
            return
        record = pending.record
        if isinstance(event, messages.Accepted):
            record.job_id = event.job_id or record.job_id
            record.state = "queued"
        elif isinstance(event, messages.Started):
            record.state = "running"
        elif isinstance(event, messages.Progress):
            if event.preview is not None and event.preview.format in ("jpeg", "png"):
                self.preview_changed.emit(bytes(event.preview.data))
            self.progress_changed.emit(event.step, event.total)
        if isinstance(event, jobs.JobEnded):
            self._on_job_ended(local_id, pending, event)
            return
        text = jobs.status_text(event)
        if text:
            self.status_changed.emit(text)

    def _on_job_ended(self, local_id: str, pending: Pending, ended: jobs.JobEnded) -> None:
        record = pending.record
        record.state = ended.state
        record.message = ended.message
        record.job_id = ended.job_id or record.job_id
        del self.pending[local_id]
        if ended.state == "done":
            record.results = list(ended.results)
            in_strip = self.previews.takes(local_id)  # then Apply in the strip inserts the chosen one
            target = kdoc.find_document(record.doc_key, fallback=pending.doc)
            try:
                if not in_strip:
                    self.apply(record, target)
                self.store_history(target)
            except Exception as exc:  # keep the result in history even if the document went away
                record.message = f"could not insert: {exc}"
                self.status_changed.emit(record.message)
            self.worker.ack(record.job_id)
            self.progress_changed.emit(1, 1)
        else:
            self.status_changed.emit(jobs.status_text(ended) or ended.state)
            if ended.state == "cancelled":
                self.worker.ack(record.job_id)
            self.progress_changed.emit(0, 1)
        self.previews.ended(local_id, ended.state, list(record.results))
        self.preview_changed.emit(b"")
        self.history_changed.emit()
        self.job_finished.emit(local_id, ended.state)

    # ------------------------------------------------------------------ history kept in the document
    def store_history(self, doc) -> None:
        """Write this document's finished jobs into it (an annotation saved in the .kra)."""
        if doc is not None:
            key = kdoc.document_key(doc)
            history_store.save(doc, self.history.of_document(key), key)

    def load_history(self, doc) -> int:
        """List the jobs stored in `doc` (reopened after a restart) that are not listed yet; returns how many."""
        if doc is None:
            return 0
        try:
            added = self.history.merge(history_store.load(doc))
        except history_store.HistoryFormatError as exc:
            self.status_changed.emit(
                f"The ACE++ history stored in {doc.name() or 'this document'} is unreadable: {exc}"
            )
            return 0
        if added:
            self.history_changed.emit()
        return added

    def _on_redelivered(self, found: list) -> None:
        for job_id, results in found:
            if results:
                self.history.add(history.redelivered_record(job_id, results))
        self.history_changed.emit()


def thumbnail(record: JobRecord) -> Any:
    r = record.results[0]
    img = qimage_from_bytes(r.rgba, r.width, r.height, FORMAT_RGBA8888)
    return QPixmap.fromImage(img).scaled(THUMB, THUMB, KEEP_ASPECT, SMOOTH)


class AceBridgeDocker(kdoc.DockWidget):
    """The UI. Widgets only mirror the controller's state; the controller does the work."""

    instances: list[AceBridgeDocker] = []

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("ACE++")
        self.settings = Settings.from_json(kdoc.read_setting("settings", ""))
        if not self.settings.client_id:
            import uuid

            self.settings.client_id = f"krita-{uuid.uuid4().hex[:12]}"
            self._save_settings()
        self.controller = Controller(self.settings)
        self.current: str | None = None
        self._build()
        self.controller.status_changed.connect(self.status.setText)
        self.controller.previews.status.connect(self.status.setText)
        self.controller.progress_changed.connect(self._on_progress)
        self.controller.preview_changed.connect(self._on_preview)
        self.controller.connection_changed.connect(self._on_connection)
        self.controller.tasks_changed.connect(self._on_tasks)
        self.controller.history_changed.connect(self._refresh_history)
        self.controller.job_finished.connect(self._on_finished)
        AceBridgeDocker.instances.append(self)
        self.controller.start()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        W = QtWidgets
        root = W.QWidget(self)
        form = W.QVBoxLayout(root)
        self.connection = W.QLabel("Connecting…")
        form.addWidget(self.connection)
        # First run: "Start ACE Bridge", the model's status and its download (firstrun.py).
        self.first_run = FirstRun(self.controller.worker, lambda: self.url_edit.text().strip())
        self.first_run_panel = FirstRunPanel(self.first_run)
        self.first_run_panel.model_ready.connect(self._reconnect)
        form.addWidget(self.first_run_panel)
        self.remote_toggle = W.QCheckBox("Daemon on another computer")
        self.remote_toggle.toggled.connect(self._show_connection_box)
        form.addWidget(self.remote_toggle)

        self.settings_box = W.QGroupBox("Daemon (empty fields: found automatically)")
        sf = W.QFormLayout(self.settings_box)
        self.url_edit = W.QLineEdit(self.settings.url)
        self.url_edit.setPlaceholderText("automatic (ws://127.0.0.1:8717/v1/ws)")
        self.token_edit = W.QLineEdit(self.settings.token)
        self.token_edit.setEchoMode(PASSWORD_ECHO)
        self.token_edit.setPlaceholderText("automatic (token file)")
        reconnect = W.QPushButton("Connect")
        reconnect.clicked.connect(self._reconnect)
        sf.addRow("URL", self.url_edit)
        sf.addRow("Token", self.token_edit)
        sf.addRow(reconnect)
        form.addWidget(self.settings_box)
        self._show_connection_box()

        grid = W.QFormLayout()
        self.task_box = W.QComboBox()
        self.task_box.currentIndexChanged.connect(self._on_task_picked)
        grid.addRow("Task", self.task_box)
        # Plain words in, the ACE++ prompt made from them (prompt_box.py); the raw form behind "Advanced".
        self.prompt_box = PromptBox(self.settings, self._save_settings)
        self.prompt, self.template = self.prompt_box.edit, self.prompt_box.template
        grid.addRow(self.prompt_box)
        self.source_box = W.QComboBox()
        self.source_box.addItem("Visible image", Source.IMAGE.value)
        self.source_box.addItem("Active layer", Source.LAYER.value)
        self.source_box.setCurrentIndex(0 if self.settings.source == Source.IMAGE.value else 1)
        grid.addRow("Read", self.source_box)
        self.reference_box = W.QComboBox()
        self.reference_box.activated.connect(self._on_reference_picked)
        self.reference_box.addItem("(no reference)", "")
        refresh = W.QPushButton("↻")
        refresh.setMaximumWidth(30)
        refresh.clicked.connect(self.refresh_layers)
        ref_row = W.QHBoxLayout()
        ref_row.addWidget(self.reference_box, 1)
        ref_row.addWidget(refresh)
        self.reference_label = W.QLabel("Reference")
        grid.addRow(self.reference_label, ref_row)

        seed_row = W.QHBoxLayout()
        self.seed_random = W.QCheckBox("random")
        self.seed_random.setChecked(self.settings.seed_mode == "random")
        self.seed_spin = W.QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(min(self.settings.seed, 2**31 - 1))
        reuse = W.QPushButton("last")
        reuse.setToolTip("Reuse the seed of the last result")
        reuse.clicked.connect(self._reuse_seed)
        seed_row.addWidget(self.seed_random)
        seed_row.addWidget(self.seed_spin, 1)
        seed_row.addWidget(reuse)
        grid.addRow("Seed", seed_row)
        fields = docker_fields()
        self.steps_spin = self._field_spin(fields["steps"], self.settings.steps)
        grid.addRow(fields["steps"].label, self.steps_spin)
        self.count_spin = self._field_spin(fields["count"], self.settings.count)
        grid.addRow(fields["count"].label, self.count_spin)
        self.padding_spin = self._spin(-1, 1024, self.settings.padding)
        self.padding_spin.setSpecialValueText("auto")
        grid.addRow("Context padding", self.padding_spin)
        self.feather_spin = self._field_spin(fields["feather"], self.settings.feather)
        grid.addRow(fields["feather"].label, self.feather_spin)
        form.addLayout(grid)
        # The selected task's own choices (local_edit's mode, reference_edit's face...), built from the task table.
        self.options_box = W.QGroupBox("Task options")
        self.options_form = W.QFormLayout(self.options_box)
        self.option_widgets: dict[str, Any] = {}
        self.options_box.hide()
        form.addWidget(self.options_box)

        buttons = W.QHBoxLayout()
        self.generate_button = W.QPushButton("Generate")
        self.generate_button.clicked.connect(self.on_generate)
        self.cancel_button = W.QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.on_cancel)
        buttons.addWidget(self.generate_button, 1)
        buttons.addWidget(self.cancel_button)
        form.addLayout(buttons)
        self.preview = W.QLabel()  # the running job's latest progress preview; hidden otherwise
        self.preview.setAlignment(ALIGN_CENTER)
        self.preview.hide()
        form.addWidget(self.preview)
        # The last job's variations: click one to preview it on the canvas, then Apply or Discard (previews.py).
        self.strip = PreviewStrip(self.controller.previews)
        form.addWidget(self.strip)
        self.preview_first_box = W.QCheckBox("Preview results before applying")
        self.preview_first_box.setChecked(self.controller.preview_first)
        self.preview_first_box.toggled.connect(lambda on: setattr(self.controller, "preview_first", bool(on)))
        form.addWidget(self.preview_first_box)
        self.expand_edit = W.QLineEdit()
        self.expand_edit.setPlaceholderText("Expand canvas: L,T,R,B px (or select past the edge)")
        self.expand_edit.setToolTip(
            "Grow the canvas by these pixels on the left, top, right and bottom; the new "
            "area is generated to fit (Local Edit, Inpaint). Empty: a selection that reaches "
            "past the canvas grows it that far."
        )
        self.expand_edit.textChanged.connect(lambda text: setattr(self.controller, "expand_text", str(text)))
        form.addWidget(self.expand_edit)
        self.progress = W.QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        form.addWidget(self.progress)
        self.status = W.QLabel("")
        self.status.setWordWrap(True)
        form.addWidget(self.status)

        self.history = W.QListWidget()
        self.history.setViewMode(ICON_MODE)
        self.history.setIconSize(QPixmap(THUMB, THUMB).size())
        self.history.setMinimumHeight(THUMB + 24)
        form.addWidget(self.history)
        history_row = W.QHBoxLayout()
        reapply = W.QPushButton("Apply again")
        reapply.setToolTip("Add the selected result to the document again, where it was made")
        reapply.clicked.connect(self.on_reapply)
        reuse_job = W.QPushButton("Reuse prompt && seed")
        reuse_job.setToolTip("Put the selected result's prompt and seed back in the form")
        reuse_job.clicked.connect(self.on_reuse)
        open_panel = W.QPushButton("Open in panel")
        open_panel.setToolTip("Show the selected result in the ACE Bridge control panel, in the web browser")
        open_panel.clicked.connect(self.on_open_in_panel)
        for button in (reapply, reuse_job, open_panel):
            history_row.addWidget(button)
        form.addLayout(history_row)
        form.addStretch(1)
        self.setWidget(root)

    def _spin(self, lo: int, hi: int, value: int) -> Any:
        spin = QtWidgets.QSpinBox()
        spin.setRange(lo, hi)
        spin.setValue(value)
        spin.setAlignment(ALIGN_CENTER)
        return spin

    def _field_spin(self, field: forms.Field, value: int) -> Any:
        """A box for a task parameter: its range from the table, plus "default (N)" at the bottom, which leaves
        the parameter out of the job so the daemon's default (the control panel's setting) applies."""
        spin = self._spin(int(field.widget_minimum or 0), int(field.maximum or 0), value)
        self._describe_field(spin, field)
        return spin

    def _describe_field(self, spin: Any, field: forms.Field) -> None:
        spin.setSpecialValueText(field.default_text() if field.unset == spin.minimum() else "")
        spin.setToolTip(field.help)

    # ------------------------------------------------------------------ Krita hooks
    def canvasChanged(self, canvas) -> None:  # noqa: N802 - Krita's name
        self.refresh_layers()
        self.controller.load_history(kdoc.active_document())  # a reopened .kra brings its history back

    def refresh_layers(self) -> None:
        doc = kdoc.active_document()
        current = self.reference_box.currentData()
        self.reference_box.clear()
        self.reference_box.addItem(getattr(self, "_no_reference_text", "(no reference)"), "")
        if doc is not None:
            for uid, name in kdoc.paint_layers(doc):
                self.reference_box.addItem(name, uid)
        index = self.reference_box.findData(current)
        self.reference_box.setCurrentIndex(max(0, index))

    # ------------------------------------------------------------------ actions
    def collect_settings(self) -> Settings:
        s = self.settings
        s.task = self.task_box.currentData() or s.task
        s.source = self.source_box.currentData() or Source.IMAGE.value
        s.seed_mode = "random" if self.seed_random.isChecked() else "fixed"
        s.seed = self.seed_spin.value()
        s.steps, s.count = self.steps_spin.value(), self.count_spin.value()
        s.padding, s.feather = self.padding_spin.value(), self.feather_spin.value()
        s.url, s.token = self.url_edit.text().strip(), self.token_edit.text().strip()
        self._save_settings()
        return s

    def _save_settings(self) -> None:
        kdoc.write_setting("settings", self.settings.to_json())

    def on_generate(self) -> str | None:
        self.collect_settings()
        ref = self.reference_box.currentData()
        text = self.prompt_box.text()
        local_id = self.controller.generate(
            instruction=text,
            reference_ids=(ref,) if ref else (),
            overrides=self.option_values(),
            advanced=self.prompt_box.is_advanced(),
        )
        if local_id:
            self.prompt_box.remember(text)
            self.current = local_id
            self.cancel_button.setEnabled(True)
        return local_id

    def on_cancel(self) -> None:
        self.controller.cancel(self.current)

    def on_reapply(self) -> None:
        item = self.history.currentItem()
        if item is None:
            return
        record = item.data(USER_ROLE)
        if record is not None and self.controller.previews.shows(record):
            self.strip.on_apply()  # its preview layer becomes the result, not a second layer left under it
            return
        if record is not None and record.results:
            self.controller.apply(record, kdoc.active_document())

    def selected_record(self) -> JobRecord | None:
        item = self.history.currentItem()
        return item.data(USER_ROLE) if item is not None else None

    def on_reuse(self) -> None:
        """The selected job's prompt (as typed) and seed back in the form, its task picked."""
        record = self.selected_record()
        if record is None:
            return
        index = self.task_box.findData(record.task)
        if index >= 0:
            self.task_box.setCurrentIndex(index)
        self.prompt_box.set_text(record.typed)
        if record.results:
            self.seed_random.setChecked(False)
            self.seed_spin.setValue(min(record.results[0].seed, 2**31 - 1))

    def on_open_in_panel(self) -> str | None:
        """The selected result in the daemon's control panel (a one-time link, opened in the browser)."""
        record = self.selected_record()
        if record is None or not record.results:
            return None
        s = self.collect_settings()
        try:
            link = panel_link.panel_link(s.url, s.token, record.job_id, record.results[0].index)
        except panel_link.PanelLinkError as exc:
            self.status.setText(str(exc))
            return None
        QtGui.QDesktopServices.openUrl(QtCore.QUrl(link))
        self.status.setText("Opened the result in the control panel.")
        return link

    def _on_reference_picked(self, *_: Any) -> None:
        """Say what a picked control layer does, since the Mode box still shows its default."""
        if self.reference_label.text() == "Control layer" and self.reference_box.currentData():
            self.status.setText(
                f"“{self.reference_box.currentText()}” guides the edit as it is (mode no preprocess, unless you pick "
                "another mode)."
            )

    def _reuse_seed(self) -> None:
        seed = self.controller.history.last_seed()
        if seed is not None:
            self.seed_random.setChecked(False)
            self.seed_spin.setValue(min(seed, 2**31 - 1))

    def _reconnect(self) -> None:
        s = self.collect_settings()
        self.controller.worker.reconfigure(s.url, s.token)

    def _show_connection_box(self, *_: Any) -> None:
        """The URL/token box only for a daemon on another machine (or when asked for one)."""
        remote = daemon.is_remote(self.url_edit.text().strip() or daemon.endpoint_url())
        self.remote_toggle.setChecked(self.remote_toggle.isChecked() or remote)
        self.settings_box.setVisible(self.remote_toggle.isChecked() or getattr(self, "_no_daemon", False))

    # ------------------------------------------------------------------ controller signals
    def _on_connection(self, state: str, message: str) -> None:
        self.first_run_panel.on_connection(state, message)
        if state in ("connected", "disconnected"):  # no daemon found: the box to point at one elsewhere
            self._no_daemon = state == "disconnected"
            self._show_connection_box()
        text = {
            "connected": "● Connected",
            "connecting": "○ Connecting…",
            "reconnecting": "◐ Reconnecting…",
            "disconnected": "○ Daemon not reachable",
            "error": "✕ Refused",
        }.get(state, state)
        self.connection.setText(text + (f" — {message}" if message else ""))
        self.connection.setToolTip(message)
        self.generate_button.setEnabled(state == "connected")

    def _on_tasks(self, tasks: dict) -> None:
        self.task_box.blockSignals(True)
        self.task_box.clear()
        for name, spec in tasks.items():
            self.task_box.addItem(spec.get("label", name).rstrip("…"), name)
        self.task_box.blockSignals(False)
        self.task_box.setCurrentIndex(max(0, self.task_box.findData(self.settings.task)))
        self._on_task_picked()

    def _on_task_picked(self, *_: Any) -> None:
        spec = self.controller.tasks.get(self.task_box.currentData() or "")
        self.prompt_box.set_task(spec)
        self.reference_box.setEnabled(bool(spec and spec.get("max_references", 0)))
        control = bool(spec) and spec.get("reference_kind") == "control"
        self.reference_label.setText("Control layer" if control else "Reference")
        self._no_reference_text = "(none: from the image)" if control else "(no reference)"
        self.reference_box.setItemText(0, self._no_reference_text)
        self.reference_box.setToolTip(
            "A sketch, line art or flat colour layer: the structure the edit follows inside the selection, used as "
            "it is (no preprocessing). Without one, the mode (canny, mosaic, recolor, contour, depth) makes it from "
            "the image."
            if control
            else "A layer shown to the model beside the edit"
        )
        fields = docker_fields(spec)  # the daemon's defaults, e.g. "default (40)" after a panel change
        for spin, name in ((self.steps_spin, "steps"), (self.count_spin, "count"), (self.feather_spin, "feather")):
            self._describe_field(spin, fields[name])
        self._build_options(option_fields(spec) if spec else [])

    def _build_options(self, fields: list[forms.Field]) -> None:
        """One widget per choice or switch of the task; left at its default, it is left out of the job."""
        while self.options_form.rowCount():
            self.options_form.removeRow(0)
        self.option_widgets = {}
        for field in fields:
            if field.kind == "float":  # strength: a slider over the table's range
                widget = FractionSlider(field)
            elif field.kind == "bool":
                widget = QtWidgets.QCheckBox()
                widget.setChecked(bool(field.default))
            else:
                widget = QtWidgets.QComboBox()
                for choice in field.choices:
                    widget.addItem(choice.replace("_", " "), choice)
                widget.setCurrentIndex(max(0, widget.findData(field.default)))
            widget.setToolTip(field.help)
            self.options_form.addRow(field.label, widget)
            self.option_widgets[field.name] = widget
        self.options_box.setVisible(bool(fields))

    def option_values(self) -> dict[str, Any]:
        return {
            name: (w.isChecked() if isinstance(w, QtWidgets.QCheckBox) else w.currentData())
            for name, w in self.option_widgets.items()
        }

    def _on_progress(self, step: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(step)

    def _on_preview(self, data: bytes) -> None:
        pixmap = preview_pixmap(data, PREVIEW_SIDE) if data else None
        if pixmap is None:
            self.preview.clear()
            self.preview.hide()
            return
        self.preview.setPixmap(pixmap)
        self.preview.show()

    def _on_finished(self, local_id: str, state: str) -> None:
        if not self.controller.pending:
            self.cancel_button.setEnabled(False)

    def _refresh_history(self) -> None:
        self.history.clear()
        for record in self.controller.history:
            if not record.results:
                continue
            item = QtWidgets.QListWidgetItem(QIcon(thumbnail(record)), f"{record.results[0].seed}")
            item.setToolTip(f"{record.task}: {record.prompt}")
            item.setData(USER_ROLE, record)
            self.history.addItem(item)
