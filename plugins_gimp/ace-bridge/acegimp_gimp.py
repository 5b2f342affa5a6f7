"""The GIMP side of the plug-in: the only module that imports gi (Gimp, GimpUi, Gegl, Gtk).

It registers one ImageProcedure per ACE++ task plus Fetch Finished Results, reads pixels and the selection
through GEGL buffers (R'G'B'A u8 / Y u8, whatever the image's precision), and inserts results as layers.
Everything else lives in acegimp_logic.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
import acegimp_logic as logic  # noqa: E402
from acegimp_bundled import client as protocol_client  # noqa: E402
from acegimp_bundled import forms, inbox  # noqa: E402
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402

Bounds, Extent, ImagePayload = logic.Bounds, logic.Extent, logic.ImagePayload
RW = GObject.ParamFlags.READWRITE
RGBA = "R'G'B'A u8"
GRAY = "Y u8"


# ------------------------------------------------------------------ reading


def _rect(b: Bounds) -> Gegl.Rectangle:
    return Gegl.Rectangle.new(b.x, b.y, b.width, b.height)


def selection_bounds(image: Gimp.Image) -> Bounds | None:
    """The selection's bounding box, or None when nothing is selected."""
    if Gimp.Selection.is_empty(image):
        return None
    values = Gimp.Selection.bounds(image)
    x1, y1, x2, y2 = (int(v) for v in values[-4:])
    non_empty = bool(values[-5])
    if not non_empty or x2 <= x1 or y2 <= y1:
        return None
    return Bounds(x1, y1, x2 - x1, y2 - y1)


def read_selection_mask(image: Gimp.Image, region: Bounds) -> ImagePayload:
    data = image.get_selection().get_buffer().get(_rect(region), 1.0, GRAY, Gegl.AbyssPolicy.NONE)
    return ImagePayload(region.width, region.height, "gray8", bytes(data))


def read_drawable(drawable: Gimp.Drawable, region: Bounds) -> ImagePayload:
    """Pixels of one drawable over an image-space region; outside the drawable is transparent."""
    offsets = drawable.get_offsets()  # (ok, x, y) from introspection
    ox, oy = int(offsets[-2]), int(offsets[-1])
    local = Bounds(region.x - ox, region.y - oy, region.width, region.height)
    data = drawable.get_buffer().get(_rect(local), 1.0, RGBA, Gegl.AbyssPolicy.NONE)
    return ImagePayload(region.width, region.height, "rgba8", bytes(data))


def read_visible(image: Gimp.Image, region: Bounds) -> ImagePayload:
    """The composite of the visible layers over the region, without changing the image."""
    tmp = Gimp.Layer.new_from_visible(image, image, "ace-bridge-visible")
    try:
        return read_drawable(tmp, region)
    finally:
        tmp.delete()


def read_reference(layer: Gimp.Drawable) -> ImagePayload:
    w, h = layer.get_width(), layer.get_height()
    data = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, w, h), 1.0, RGBA, Gegl.AbyssPolicy.NONE)
    return ImagePayload(w, h, "rgba8", bytes(data))


# ------------------------------------------------------------------ writing


def _new_layer(image: Gimp.Image, name: str, width: int, height: int) -> Gimp.Layer:
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    kind = Gimp.ImageType.GRAYA_IMAGE if gray else Gimp.ImageType.RGBA_IMAGE
    return Gimp.Layer.new(image, name, width, height, kind, 100.0, Gimp.LayerMode.NORMAL)


def _layer_from_payload(image: Gimp.Image, payload: ImagePayload, name: str) -> Gimp.Layer:
    if payload.format in ("rgba8", "bgra8", "gray8"):
        rgba = payload.to_rgba8()
        layer = _new_layer(image, name, rgba.width, rgba.height)
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, rgba.width, rgba.height), RGBA, rgba.data)
        buf.flush()
        return layer
    # Encoded results (a daemon elsewhere sends PNG/WebP): let GIMP's own loaders decode them.
    suffix = "." + payload.format
    fd, path = tempfile.mkstemp(prefix="ace-bridge-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload.data)
        layer = Gimp.file_load_layer(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(path))
        layer.set_name(name)
        if not layer.has_alpha():
            layer.add_alpha()
        return layer
    finally:
        os.unlink(path)


def _attach_provenance(item: Gimp.Item, data: bytes) -> None:
    item.attach_parasite(Gimp.Parasite.new(logic.PARASITE_NAME, Gimp.PARASITE_PERSISTENT, list(data)))


def _top_layer(
    image: Gimp.Image, payload: ImagePayload, name: str, offsets: tuple[int, int], record: dict[str, Any]
) -> Gimp.Layer:
    """A result that did not come from this run's job (sent from the panel, brought back from the history) as a new
    top layer at `offsets` with its provenance record, in one undo group."""
    image.undo_group_start()
    try:
        layer = _layer_from_payload(image, payload, name)
        image.insert_layer(layer, None, 0)
        layer.set_offsets(*offsets)
        _attach_provenance(layer, logic.provenance.record_bytes(record))
    finally:
        image.undo_group_end()
    return layer


def _placement(image: Gimp.Image, meta: dict[str, Any], active: Any) -> tuple[Any, int]:
    """Parent and position of new result layers: on top, or directly above the active layer."""
    if meta.get("placement", "top") == "above-active" and active is not None and active.get_image() == image:
        return active.get_parent(), image.get_item_position(active)
    return None, 0


def _result_layer(image: Gimp.Image, result: Any, meta: dict[str, Any], name: str, parent: Any, position: int):
    """One result as a layer inserted at (parent, position), placed at its region."""
    region = meta.get("region") or [0, 0, 0, 0]
    rx, ry = (result.region[0], result.region[1]) if getattr(result, "region", None) else region[:2]
    layer = _layer_from_payload(image, result.image, name)
    image.insert_layer(layer, parent, position)
    want_w, want_h = int(region[2]), int(region[3])
    if (
        meta.get("fit_to_region")
        and want_w > 0
        and want_h > 0
        and (layer.get_width(), layer.get_height()) != (want_w, want_h)
    ):
        # Tasks without an input image generate at >= 64 px: fit the output to the selection's box.
        layer.scale(want_w, want_h, True)
    layer.set_offsets(int(rx), int(ry))
    if meta.get("clip_to_selection") and not Gimp.Selection.is_empty(image):
        layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
    layer.update(0, 0, layer.get_width(), layer.get_height())
    return layer


def insert_results(
    image: Gimp.Image, results: list[Any], meta: dict[str, Any], active: Any, before: Any = None
) -> list[Gimp.Layer]:
    """Insert results as layers (a group when several) inside one undo group. Returns the new layers.
    `before` (a callable) runs first inside the same undo group (Expand Canvas grows the canvas there)."""
    if not results:
        return []
    parent, position = _placement(image, meta, active)
    layers = []
    image.undo_group_start()
    try:
        if before is not None:
            before()
        target_parent, target_pos = parent, position
        if len(results) > 1:
            group = Gimp.GroupLayer.new(
                image, logic.group_name(meta["task"], meta.get("prompt", ""), None, len(results))
            )
            image.insert_layer(group, parent, position)
            _attach_provenance(group, logic.provenance_bytes(results[0], meta))
            target_parent, target_pos = group, 0
        for index, result in enumerate(results):
            name = logic.layer_name(meta["task"], meta.get("prompt", ""), result.seed, index, len(results))
            layer = _result_layer(image, result, meta, name, target_parent, target_pos)
            target_pos += 1 if len(results) > 1 else 0
            _attach_provenance(layer, logic.provenance_bytes(result, meta))
            layers.append(layer)
    finally:
        image.undo_group_end()
    Gimp.displays_flush()
    return layers


class PreviewSession:
    """Preview, then apply: one result at a time as a temporary layer, Apply keeps the chosen one as the result
    layer (one undo group), Discard leaves the image as it was.

    While a preview is up the image's undo is frozen, so previews leave no undo steps; an expand's grown canvas is
    part of the preview (the new area is where the result goes) and is taken back before Apply redoes it inside
    the result's undo group."""

    def __init__(
        self,
        image: Gimp.Image,
        results: list[Any],
        meta: dict[str, Any],
        active: Any = None,
        expand: logic.ExpandPlan | None = None,
    ) -> None:
        self.image, self.results, self.meta, self.active, self.expand = image, results, meta, active, expand
        self.picker = logic.ResultPicker(len(results))
        self.layer: Gimp.Layer | None = None
        self._frozen = False

    def show(self, index: int) -> None:
        old, new = self.picker.show(index)
        if new is None:
            return
        if not self._frozen:
            self.image.undo_freeze()
            self._frozen = True
            if self.expand is not None:
                self.grow()
        if old is not None and self.layer is not None:
            self.image.remove_layer(self.layer)
            self.layer = None
        result = self.results[new]
        name = logic.preview_layer_name(
            self.meta["task"], self.meta.get("prompt", ""), result.seed, new, len(self.results)
        )
        parent, position = _placement(self.image, self.meta, self.active)
        self.layer = _result_layer(self.image, result, self.meta, name, parent, position)
        Gimp.displays_flush()

    def grow(self) -> None:
        """Grow the canvas by the expand's margins (the layers move with the old canvas)."""
        grown, margins = self.expand.grown, self.expand.margins
        self.image.resize(grown.width, grown.height, margins.left, margins.top)

    def _take_back(self) -> None:
        if self.layer is not None:
            self.image.remove_layer(self.layer)
            self.layer = None
        if self._frozen:
            if self.expand is not None:
                canvas, margins = self.expand.canvas, self.expand.margins
                self.image.resize(canvas.width, canvas.height, -margins.left, -margins.top)
            self.image.undo_thaw()
            self._frozen = False

    def apply(self) -> list[Gimp.Layer]:
        index = self.picker.apply()
        self._take_back()
        if index is None:
            return []
        return insert_results(
            self.image,
            [self.results[index]],
            self.meta,
            self.active,
            before=self.grow if self.expand is not None else None,
        )

    def discard(self) -> None:
        self.picker.discard()
        self._take_back()
        Gimp.displays_flush()


def _pixbuf(payload: ImagePayload, box: int = 160):
    """A thumbnail of a result for the results window."""
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf

    if payload.format in ("rgba8", "bgra8", "gray8"):
        rgba = payload.to_rgba8()
        full = GdkPixbuf.Pixbuf.new_from_bytes(
            GLib.Bytes.new(bytes(rgba.data)), GdkPixbuf.Colorspace.RGB, True, 8, rgba.width, rgba.height, rgba.width * 4
        )
    else:
        loader = GdkPixbuf.PixbufLoader()
        loader.write(bytes(payload.data))
        loader.close()
        full = loader.get_pixbuf()
    width, height = logic.thumbnail_size(full.get_width(), full.get_height(), box)
    return full.scale_simple(width, height, GdkPixbuf.InterpType.BILINEAR)


def _thumbnail_list(Gtk: Any, dialog: Any, store: Any) -> Any:
    """A (pixbuf, label) store as one column of thumbnails with their labels beside them: a narrow window next to
    the canvas, Up/Down pick; a double click or Return on one answers the dialog with OK."""
    view = Gtk.IconView.new_with_model(store)
    view.set_pixbuf_column(0)
    view.set_text_column(1)
    view.set_selection_mode(Gtk.SelectionMode.BROWSE)
    view.set_columns(1)
    view.set_item_orientation(Gtk.Orientation.HORIZONTAL)
    view.connect("item-activated", lambda *_: dialog.response(Gtk.ResponseType.OK))
    return view


def _show_first_selected(Gtk: Any, dialog: Any, view: Any) -> None:
    """Show the window with the first thumbnail selected (its selection-changed handler runs) and the keys on it."""
    first = Gtk.TreePath.new_first()
    view.select_path(first)
    view.set_cursor(first, None, False)
    dialog.show_all()
    view.grab_focus()


RESULTS_TITLE = "ACE++ Results"


def pick_result(session: PreviewSession, title: str = RESULTS_TITLE) -> list[Gimp.Layer]:
    """The results window: thumbnails of every result, the selected one previewed on the canvas; Apply (or a
    double click / Return on a thumbnail) keeps it, Discard (or Escape) drops them all."""
    gi.require_version("Gtk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf, Gtk

    dialog = Gtk.Dialog(title=title)
    dialog.add_button("_Discard", Gtk.ResponseType.CANCEL)
    dialog.add_button("_Apply", Gtk.ResponseType.OK)
    dialog.set_default_response(Gtk.ResponseType.OK)
    count = len(session.results)
    hint = Gtk.Label(
        label=(
            f"{count} results: pick one to preview it on the canvas." if count > 1 else "The result is on the canvas."
        )
        + "\nApply keeps it as a layer, Discard drops it."
    )
    store = Gtk.ListStore(GdkPixbuf.Pixbuf, str)
    for index, result in enumerate(session.results):
        store.append([_pixbuf(result.image, 96), f"#{index + 1}  seed {result.seed}"])
    view = _thumbnail_list(Gtk, dialog, store)
    view.set_margin(4)

    def selected(*_args) -> None:
        paths = view.get_selected_items()
        if paths:
            session.show(paths[0].get_indices()[0])

    view.connect("selection-changed", selected)
    area = dialog.get_content_area()
    area.pack_start(hint, False, False, 8)
    area.pack_start(view, True, True, 4)
    _show_first_selected(Gtk, dialog, view)
    try:
        response = dialog.run()
    finally:
        dialog.destroy()
    if response == Gtk.ResponseType.OK:
        return session.apply()
    session.discard()
    return []


# ------------------------------------------------------------------ UI


class GimpProgressUi(logic.HeadlessUi):
    """GIMP's progress bar; with a dialog (interactive runs) a Cancel window that cancels the job."""

    def __init__(self, title: str, interactive: bool) -> None:
        super().__init__()
        Gimp.progress_init(title)
        self._cancelled = False
        self._window = None
        self._bar = None
        self._preview = None
        if interactive:
            self._make_window(title)

    def _make_window(self, title: str) -> None:
        try:
            gi.require_version("Gtk", "3.0")
            from gi.repository import Gtk

            self._gtk = Gtk
            win = Gtk.Dialog(title=title)
            win.add_button("_Cancel", Gtk.ResponseType.CANCEL)
            self._bar = Gtk.ProgressBar(show_text=True)
            self._bar.set_text("ACE++: sending…")
            win.get_content_area().pack_start(self._bar, True, True, 12)
            # Where the picture is heading, every few steps (the daemon's small JPEG previews); shown once the
            # first one arrives, so a job that is only queued keeps a compact window.
            self._preview = Gtk.Image()
            self._preview.set_no_show_all(True)
            win.get_content_area().pack_start(self._preview, False, False, 6)
            win.connect("response", lambda *_: self._cancel())
            win.connect("delete-event", lambda *_: self._cancel() or True)
            win.set_default_size(360, -1)
            win.show_all()
            self._window = win
        except Exception:  # no display: the progress bar alone
            self._window = None

    def _cancel(self) -> None:
        self._cancelled = True

    def progress(self, fraction: float | None, text: str | None) -> None:
        if text:
            Gimp.progress_set_text(text)
            if self._bar is not None:
                self._bar.set_text(text)
        if fraction is not None:
            Gimp.progress_update(fraction)
            if self._bar is not None:
                self._bar.set_fraction(fraction)
        elif self._bar is not None:
            self._bar.pulse()

    def preview(self, image) -> None:
        if self._preview is None or image.format not in ("jpeg", "png"):
            return
        try:
            gi.require_version("GdkPixbuf", "2.0")
            from gi.repository import GdkPixbuf

            loader = GdkPixbuf.PixbufLoader()
            loader.write(bytes(image.data))
            loader.close()
            pixbuf = loader.get_pixbuf()
            self._preview.set_from_pixbuf(pixbuf)
            self._preview.show()
        except Exception as exc:  # a preview is a nicety: never let it break the job
            if os.environ.get("ACE_BRIDGE_DEBUG"):
                print(f"ace-bridge: preview not shown ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
            return
        if os.environ.get("ACE_BRIDGE_DEBUG"):
            print(f"ace-bridge: preview shown {pixbuf.get_width()}x{pixbuf.get_height()}", file=sys.stderr, flush=True)

    def cancel_requested(self) -> bool:
        return self._cancelled

    def pump(self) -> None:
        if self._window is not None:
            # GLib's main context, not Gtk.events_pending()/main_iteration_do(): PyGObject 3.58 (GIMP 3.2 on
            # Python 3.14) deprecates those; this is what they did.
            context = GLib.MainContext.default()
            while context.pending():
                context.iteration(False)

    def close(self) -> None:
        if self._window is not None:
            self._window.destroy()
            self.pump()
            self._window = None
        Gimp.progress_end()


# ------------------------------------------------------------------ procedures


def _state() -> logic.ProfileState:
    return logic.ProfileState(Path(Gimp.directory()) / logic.STATE_FILE)


def _client(settings: logic.Settings, state: logic.ProfileState, *, resume: bool, previews: bool = False):
    # offers="later": results a panel user sends to GIMP wait in the daemon for Fetch Finished Results (ace_editor.inbox)
    return protocol_client.BridgeClient(
        url=settings.url or None,
        token=settings.token or None,
        client_id=state.client_id,
        client_name=logic.CLIENT_NAME,
        client_version=logic.PLUGIN_VERSION,
        editor=f"gimp {Gimp.version()}",
        session=state.session if resume else None,
        previews=previews,
        offers=inbox.LATER,
    )


def _settings_from_config(config: Gimp.ProcedureConfig, action: logic.Action | None) -> logic.Settings:
    s = logic.Settings()
    for name in (
        "prompt",
        "seed",
        "steps",
        "count",
        "guidance",
        "padding",
        "feather",
        "source",
        "mode",
        "face",
        "strength",
        "advanced",
        "reuse",
        "width",
        "height",
        "url",
        "token",
    ):
        if config.find_property(name) is not None:
            value = config.get_property(name)
            setattr(s, name, value if value is not None else getattr(s, name))
    return s


def _add_arguments(proc: Gimp.Procedure, arguments: list[logic.Argument]) -> None:
    """Procedure arguments as acegimp_logic declares them (an action's from the task table, Expand Canvas's)."""
    for arg in arguments:
        if arg.kind == "string":
            proc.add_string_argument(arg.name, arg.label, arg.help, arg.default, RW)
        elif arg.kind == "layer":
            proc.add_layer_argument(arg.name, arg.label, arg.help, True, RW)
        elif arg.kind == "choice":
            choice = Gimp.Choice.new()
            for i, (nick, label, help_text) in enumerate(arg.choices):
                choice.add(nick, i, label, help_text)
            proc.add_choice_argument(arg.name, arg.label, arg.help, choice, arg.default, RW)
        elif arg.kind == "boolean":
            proc.add_boolean_argument(arg.name, arg.label, arg.help, arg.default, RW)
        elif arg.kind == "int":
            proc.add_int_argument(
                arg.name, arg.label, arg.help, int(arg.minimum), int(arg.maximum), int(arg.default), RW
            )
        elif arg.kind == "double":
            proc.add_double_argument(
                arg.name, arg.label, arg.help, float(arg.minimum), float(arg.maximum), float(arg.default), RW
            )
        else:
            raise ValueError(f"unknown argument kind {arg.kind!r}")


def _add_connection_args(proc: Gimp.Procedure) -> None:
    proc.add_string_argument(
        "url", logic.CONNECTION_LABELS["url"], "Empty: discovery (ACE_BRIDGE_URL, runtime.json, default)", "", RW
    )
    proc.add_string_argument(
        "token", logic.CONNECTION_LABELS["token"], "Empty: ACE_BRIDGE_TOKEN or the daemon's token file", "", RW
    )
    proc.add_int_return_value("layers", "Layers", "Number of result layers inserted", 0, 1000, 0, RW)


def _return(procedure: Gimp.Procedure, status: Gimp.PDBStatusType, message: str = "", layers: int = 0):
    if status == Gimp.PDBStatusType.SUCCESS:
        rv = procedure.new_return_values(status, GLib.Error())
        rv.remove(1)
        rv.insert(1, GObject.Value(GObject.TYPE_INT, layers))
        return rv
    if status == Gimp.PDBStatusType.CANCEL:
        return procedure.new_return_values(status, GLib.Error())
    return procedure.new_return_values(status, GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0))


def _log_unexpected(exc: BaseException) -> None:
    """Expected failures carry their whole message; anything else also leaves a traceback on stderr."""
    if not logic.is_expected_error(exc):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def _interactive_dialog(
    procedure, config, title: str, names: list[str], *, combos: tuple[str, ...] = (), recent_prompts: bool = False
) -> bool:
    """GIMP's dialog of a procedure's own arguments `names` (an action's, Expand Canvas's). True: OK."""
    _gimpui_init()
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    dialog = GimpUi.ProcedureDialog.new(procedure, config, title)
    # A choice of up to 3 items is a radio frame by default, whose title carries no mnemonic (GIMP 3.2 warns
    # "no mnemonic for property"); a combo box has a label with one. Its widget must exist before fill().
    for name in combos:
        dialog.get_widget(name, Gtk.ComboBox.__gtype__)
    dialog.fill(names)
    if recent_prompts:
        _add_recent_prompts(dialog, config, Gtk)
    try:
        return bool(dialog.run())
    finally:
        dialog.destroy()


def _run_dialog(
    procedure: Gimp.Procedure, config: Gimp.ProcedureConfig, title: str, connection_fields: bool = True
) -> bool:
    """An action's dialog: its arguments, with the recent prompts above them."""
    arguments = logic.procedure_arguments(logic.ACTIONS_BY_PROCEDURE[procedure.get_name()])
    # The URL and token fields only for a daemon on another computer (acegimp_setup decides).
    names = [arg.name for arg in arguments] + (["url", "token"] if connection_fields else [])
    combos = tuple(arg.name for arg in arguments if arg.kind == "choice")
    return _interactive_dialog(procedure, config, title, names, combos=combos, recent_prompts=True)


def _prompts() -> logic.RecentPromptFile:
    return logic.RecentPromptFile(Path(Gimp.directory()) / logic.PROMPTS_FILE)


def _add_recent_prompts(dialog: Any, config: Gimp.ProcedureConfig, Gtk: Any) -> None:
    """Recent prompts one click away: a list above the arguments that puts the chosen one into the Prompt field."""
    if config.find_property("prompt") is None:
        return
    recent = _prompts().prompts
    if not recent:
        return
    combo = Gtk.ComboBoxText()
    combo.append_text("Recent prompts…")
    for prompt in recent:
        combo.append_text(prompt)
    combo.set_active(0)

    def chosen(box) -> None:
        if box.get_active() > 0:
            config.set_property("prompt", box.get_active_text())

    combo.connect("changed", chosen)
    area = dialog.get_content_area()
    area.pack_start(combo, False, False, 6)
    area.reorder_child(combo, 0)
    combo.show()


def document_name(image: Gimp.Image) -> str:
    """The image's identity in the daemon's history: its file name, or "Untitled-<id>" before it is saved."""
    file = image.get_file()
    if file is not None and file.get_basename():
        return str(file.get_basename())
    return f"Untitled-{image.get_id()}"


def _active_record(active: Any) -> dict[str, Any] | None:
    if active is None:
        return None
    parasite = active.get_parasite(logic.PARASITE_NAME)
    if parasite is None:
        return None
    try:
        return logic.parse_provenance(bytes(parasite.get_data()))
    except ValueError:
        return None


class _Run:
    """What one procedure run opens (the progress UI, the client) and what a cancelled job needs (the profile state,
    the job): `_enveloped` closes the UI, then the client, however the run ends."""

    def __init__(self) -> None:
        self.ui: GimpProgressUi | None = None
        self.client: Any = None
        self.welcome: Any = None
        self.state: logic.ProfileState | None = None
        self.job: Any = None

    def connect(self, title: str, settings: logic.Settings, interactive: bool) -> Any:
        """The progress UI (with its Cancel window when interactive), then a fresh session with the daemon; job
        previews only when interactive (they need the window). Returns the connected client."""
        self.ui = GimpProgressUi(title, interactive)
        self.ui.progress(None, "ACE++: connecting…")
        self.client = _client(settings, self.state, resume=False, previews=interactive)
        self.welcome = self.client.connect()
        self.state.session = self.welcome.session
        return self.client

    def close_ui(self) -> None:
        if self.ui is not None:
            self.ui.close()
            self.ui = None

    def close(self) -> None:
        self.close_ui()
        if self.client is not None:
            self.client.close()


def _enveloped(procedure: Gimp.Procedure, body: Callable[[_Run], int | None]):
    """Run a procedure's own `body` and turn how it ended into the PDB's return values: the number of layers it
    inserted is SUCCESS, None (the user closed a window) is CANCEL; a cancelled job is acknowledged (the daemon
    keeps nothing for Fetch) and is CANCEL too; any other error is EXECUTION_ERROR with its message (and a
    traceback on stderr when unexpected). The UI and the client are closed whatever happens."""
    run = _Run()
    try:
        layers = body(run)
        if layers is None:
            return _return(procedure, Gimp.PDBStatusType.CANCEL)
        return _return(procedure, Gimp.PDBStatusType.SUCCESS, layers=layers)
    except logic.JobCancelled:
        if run.job is not None:
            _forget_cancelled(run.client, run.state, run.job.id)
        return _return(procedure, Gimp.PDBStatusType.CANCEL)
    except Exception as exc:
        _log_unexpected(exc)
        return _return(procedure, Gimp.PDBStatusType.EXECUTION_ERROR, logic.describe_error(exc))
    finally:
        run.close()


def _acknowledge(client: Any, state: logic.ProfileState, job_id: str) -> None:
    """A job whose results are in (or reported): the daemon may drop them, and the profile no longer waits."""
    client.ack(job_id)
    state.remove_pending(job_id)


def run_action(procedure, run_mode, image, drawables, config, data):
    action = logic.ACTIONS_BY_PROCEDURE[procedure.get_name()]
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    if interactive:
        # First run: no daemon on this computer, or no usable model -> the setup window (acegimp_setup.py).
        import acegimp_setup
        from acegimp_bundled import daemon

        first = _settings_from_config(config, action)
        go_on, remote = acegimp_setup.run_setup(
            daemon.endpoint_url(first.url), lambda: _client(first, _state(), resume=False)
        )
        if not go_on or not _run_dialog(procedure, config, f"ACE++ {action.label.rstrip('…')}", remote):
            return _return(procedure, Gimp.PDBStatusType.CANCEL)
    settings = _settings_from_config(config, action)
    return _enveloped(procedure, lambda run: _action_job(run, action, settings, image, drawables, config, interactive))


def _action_job(
    run: _Run,
    action: logic.Action,
    settings: logic.Settings,
    image: Gimp.Image,
    drawables: list[Gimp.Drawable],
    config: Gimp.ProcedureConfig,
    interactive: bool,
) -> int:
    """One action's job: read the pixels, submit, follow it, insert the chosen results. Returns the layer count."""
    run.state = state = _state()
    canvas = Extent(image.get_width(), image.get_height())
    plan = logic.plan_job(action, settings, canvas, selection_bounds(image))
    active = drawables[0] if drawables else (image.get_selected_drawables() or [None])[0]
    if settings.reuse:
        settings = logic.reuse_from_record(settings, _active_record(active))
    if action.needs_image and settings.source == "layer" and active is None:
        raise logic.UserError("Select a layer to read, or set Read to 'Visible image'.")
    references = []
    if action.takes_reference:
        ref = config.get_property("reference")
        if ref is None and action.reference_required:
            raise logic.UserError(
                f"{action.label.rstrip('…')} needs a reference layer: choose one in the "
                "dialog (or pass the 'reference' argument)."
            )
        if ref is not None:
            references.append(read_reference(ref))
    image_payload = mask = None
    if plan.read_image:
        if plan.placement == "above-active":
            image_payload = read_drawable(active, plan.region)
        else:
            image_payload = read_visible(image, plan.region)
        mask = read_selection_mask(image, plan.region) if plan.selection else logic.full_mask(plan.region)
    params = forms.with_control_mode(action.spec, logic.build_params(action, settings, plan), bool(references))

    client = run.connect(f"ACE++ {action.label.rstrip('…')}", settings, interactive)
    logic.check_offered(action, run.welcome.tasks, run.welcome.engine)
    run.ui.progress(None, "ACE++: sending…")
    run.job = job = client.submit(
        action.task,
        logic.job_prompt(action, settings, params),
        image=image_payload,
        mask=mask,
        references=references,
        params=params,
        label=logic.job_label(document_name(image), plan.region),
    )
    _prompts().add(settings.prompt)
    run.ui.progress(None, logic.queued_text(job.position))  # until `started` or a new position arrives
    meta = {
        "task": action.task,
        "prompt": settings.prompt,
        "params": params,
        "placement": plan.placement,
        "source": settings.source,
        "region": list(plan.region),
        "image_id": image.get_id(),
        # Results of image tasks carry the feathered selection as alpha; generated ones get a mask.
        "fit_to_region": not plan.read_image,
        "clip_to_selection": not plan.read_image and bool(plan.selection),
    }
    state.add_pending(job.id, meta)
    outcome = logic.wait_for_job(job, run.ui)
    if interactive and outcome.results:
        run.close_ui()
        layers = pick_result(PreviewSession(image, outcome.results, meta, active))
    else:
        layers = insert_results(image, outcome.results, meta, active)
    _acknowledge(client, state, job.id)
    return len(layers)


def _forget_cancelled(client, state: logic.ProfileState, job_id: str) -> None:
    """Acknowledge a job the user cancelled, so the daemon does not keep it for "Fetch finished results", and drop
    it from the profile's pending jobs. (When the cancel could not be sent, the daemon ignores the ack of the
    still running job; "Fetch finished results" later reports it as cancelled and acknowledges it.)"""
    try:
        client.ack(job_id)
    except Exception as exc:  # the connection is gone: fetching later acknowledges it
        print(f"ace-bridge: could not acknowledge cancelled job {job_id}: {logic.describe_error(exc)}", file=sys.stderr)
        return
    state.remove_pending(job_id)


def run_fetch(procedure, run_mode, image, drawables, config, data):
    settings = _settings_from_config(config, None)
    return _enveloped(procedure, lambda run: _fetch(run, settings, run_mode, image, drawables))


def _fetch(run: _Run, settings: logic.Settings, run_mode: Any, image: Gimp.Image, drawables: list[Any]) -> int:
    """Results of this profile's jobs that finished after the plug-in ended, then results sent from the panel."""
    run.state = state = _state()
    run.client = client = _client(settings, state, resume=True)
    try:
        welcome = client.connect()
    except Exception as exc:
        if type(exc).__name__ in ("DaemonNotRunning", "Unauthorized", "VersionMismatch"):
            raise
        run.client = client = _client(settings, state, resume=False)  # the old session is gone: start fresh
        welcome = client.connect()
    state.session = welcome.session
    inserted = 0
    active = drawables[0] if drawables else None
    for handle in client.fetch_unacknowledged(wait=3.0):
        try:
            outcome = logic.wait_for_job(handle, logic.HeadlessUi(), event_timeout_s=30)
        except (logic.UserError, logic.JobCancelled) as exc:
            print(f"ace-bridge: job {handle.id}: {logic.describe_error(exc)}", file=sys.stderr)
            _acknowledge(client, state, handle.id)
            continue
        meta = state.pending(handle.id) or {}
        if not meta and outcome.results:
            first = outcome.results[0]
            meta = {"task": first.provenance.get("task", "result"), "prompt": first.provenance.get("prompt", "")}
        meta.setdefault("task", "result")
        inserted += len(insert_results(image, outcome.results, meta, active))
        _acknowledge(client, state, handle.id)
    inserted += _take_offers(client, image)
    if inserted == 0 and run_mode == Gimp.RunMode.INTERACTIVE:
        Gimp.message("ACE++: no finished results are waiting for this GIMP profile.")
    return inserted


def _take_offers(client: Any, current: Gimp.Image) -> int:
    """Results a panel user sent to GIMP ("send to editor"), each as a new top layer in one undo group: into the
    image the user picked, else the one the result was made for, else `current`. Returns how many went in."""
    images = {str(img.get_id()): img for img in Gimp.get_images()}
    docs = [
        inbox.OpenDocument(key, document_name(img), img == current, img.get_width(), img.get_height())
        for key, img in images.items()
    ]

    def insert(item: Any) -> str:
        chosen = inbox.choose_document(item, docs)
        if chosen is None:
            raise inbox.NoDocument("GIMP")
        image = images[chosen.key]
        x, y, w, h = inbox.placement(item, chosen)
        params = item.provenance.get("params")
        record = logic.provenance.provenance_record(
            str(item.provenance.get("task", "")),
            str(item.provenance.get("prompt", "")),
            item.seed,
            params if isinstance(params, dict) else {},
            (x, y, w, h),
            "panel",
            item.job_id,
            item.provenance,
        )
        _top_layer(image, ImagePayload(w, h, "rgba8", item.rgba), item.layer_name(), (x, y), record)
        return chosen.name

    outcomes = inbox.take_waiting(client, insert, wait=3.0)
    for ok, message in outcomes:
        if not ok:
            print(f"ace-bridge: a result sent from the panel: {message}", file=sys.stderr)
    if outcomes:
        Gimp.displays_flush()
    return sum(1 for ok, _ in outcomes if ok)


def run_expand(procedure, run_mode, image, drawables, config, data):
    """Expand Canvas: the canvas grows by the four margins and the new area is generated to fit (one undo group)."""
    interactive = run_mode == Gimp.RunMode.INTERACTIVE
    if interactive and not _interactive_dialog(
        procedure,
        config,
        f"ACE++ {logic.EXPAND_LABEL.rstrip('…')}",
        ["prompt", *(side[0] for side in logic.EXPAND_SIDES), "seed", "steps", "count"],
    ):
        return _return(procedure, Gimp.PDBStatusType.CANCEL)
    settings = _settings_from_config(config, None)
    return _enveloped(procedure, lambda run: _expand_job(run, settings, image, config, interactive))


def _expand_job(
    run: _Run, settings: logic.Settings, image: Gimp.Image, config: Gimp.ProcedureConfig, interactive: bool
) -> int:
    """Expand Canvas's job: plan the grown canvas, submit the outpainting, grow and insert in one undo group."""
    run.state = _state()
    canvas = Extent(image.get_width(), image.get_height())
    margins = tuple(int(config.get_property(side[0])) for side in logic.EXPAND_SIDES)
    plan = logic.plan_expand(canvas, margins, read_visible(image, Bounds(0, 0, canvas.width, canvas.height)).data)
    client = run.connect(f"ACE++ {logic.EXPAND_LABEL.rstrip('…')}", settings, interactive)
    task = logic.expand_task(run.welcome.tasks)
    spec = logic.TASKS[task]
    # No inward feather: the mask's own seam (geometry.expand_mask) blends the old edge, and the grown canvas's
    # outer border must stay opaque.
    values = {"seed": settings.seed, "steps": settings.steps, "count": settings.count, "feather": 0}
    params = forms.params_from(spec, values)
    region = [0, 0, plan.grown.width, plan.grown.height]
    run.job = job = client.submit(
        task,
        logic.prompting.painter_prompt(task, settings.prompt),
        image=plan.image,
        mask=plan.mask,
        params=params,
        label=logic.job_label(document_name(image), region),
    )
    _prompts().add(settings.prompt)
    run.ui.progress(None, logic.queued_text(job.position))
    meta = {
        "task": task,
        "prompt": settings.prompt,
        "params": {**params, "expand": list(plan.margins)},
        "placement": "top",
        "source": "visible",
        "region": region,
        "image_id": image.get_id(),
    }
    outcome = logic.wait_for_job(job, run.ui)
    session = PreviewSession(image, outcome.results, meta, None, expand=plan)
    if interactive and outcome.results:
        run.close_ui()
        layers = pick_result(session)
    else:
        layers = insert_results(image, outcome.results, meta, None, before=session.grow)
    client.ack(job.id)  # an expand is not a pending job of the profile: nothing to drop there
    return len(layers)


def _history_layer(image: Gimp.Image, png: bytes, record: dict[str, Any]) -> Gimp.Layer:
    """A result from the daemon's history as a new top layer at the place it was made for (one undo group)."""
    payload = ImagePayload(0, 0, "png", png)
    region = record.get("region") or [0, 0, 0, 0]
    name = logic.layer_name(record.get("task", "result"), record.get("prompt", ""), record.get("seed"), 0, 1)
    layer = _top_layer(image, payload, name, (int(region[0]), int(region[1])), record)
    Gimp.displays_flush()
    return layer


def _choose_entry(entries: list[dict[str, Any]], reader: Any) -> dict[str, Any] | None:
    """The Recent Results window: this image's results, newest first, with thumbnails; Add brings one back."""
    gi.require_version("Gtk", "3.0")
    gi.require_version("GdkPixbuf", "2.0")
    from gi.repository import GdkPixbuf, Gtk

    _gimpui_init()
    dialog = Gtk.Dialog(title=f"ACE++ {logic.RECENT_LABEL.rstrip('…')}")
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button("_Add as layer", Gtk.ResponseType.OK)
    store = Gtk.ListStore(GdkPixbuf.Pixbuf, str)
    for entry in entries:
        try:
            thumb = _pixbuf(ImagePayload(0, 0, "png", reader.image(entry["entry"])), 96)
        except Exception:  # a result whose file is gone still gets its line
            thumb = None
        store.append([thumb, logic.entry_title(entry)])
    view = _thumbnail_list(Gtk, dialog, store)
    scroller = Gtk.ScrolledWindow()
    scroller.set_min_content_height(min(400, 110 * len(entries)))
    scroller.set_min_content_width(380)
    scroller.add(view)
    dialog.get_content_area().pack_start(scroller, True, True, 4)
    _show_first_selected(Gtk, dialog, view)
    try:
        response = dialog.run()
        paths = view.get_selected_items()
    finally:
        dialog.destroy()
    if response != Gtk.ResponseType.OK or not paths:
        return None
    return entries[paths[0].get_indices()[0]]


def _gimpui_init() -> None:
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init("ace-bridge")


def run_recent(procedure, run_mode, image, drawables, config, data):
    """Recent Results: the daemon's history for this image (by the label its jobs carry); re-add one as a layer."""
    settings = _settings_from_config(config, None)
    return _enveloped(procedure, lambda _run: _recent(settings, run_mode, image, config))


def _recent(settings: logic.Settings, run_mode: Any, image: Gimp.Image, config: Gimp.ProcedureConfig) -> int | None:
    """The chosen history entry as a new layer (1), or None when the user closed the window."""
    url, token = logic.daemon_history.resolve_endpoint(settings.url, settings.token)
    reader = logic.DaemonHistory(url, token)
    document = document_name(image)
    entries = logic.results_for_document(reader.entries(), document)
    if not entries:
        raise logic.UserError(
            f"The daemon's history has no ACE++ results for '{document}' yet (results are matched by the "
            "image's file name)."
        )
    wanted = str(config.get_property("entry") or "")
    if run_mode == Gimp.RunMode.INTERACTIVE and not wanted:
        entry = _choose_entry(entries, reader)
        if entry is None:
            return None
    elif wanted:
        entry = next((e for e in entries if e["entry"] == wanted), None)
        if entry is None:
            raise logic.UserError(f"'{wanted}' is not one of this image's results in the daemon's history.")
    else:
        entry = entries[0]
    record = logic.record_from_entry(entry, reader.meta(entry["entry"]))
    _history_layer(image, reader.image(entry["entry"]), record)
    return 1


class AceBridgePlugIn(Gimp.PlugIn):
    def do_query_procedures(self):
        return [a.procedure for a in logic.ACTIONS] + [
            logic.FETCH_PROCEDURE,
            logic.EXPAND_PROCEDURE,
            logic.RECENT_PROCEDURE,
        ]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        if name == logic.FETCH_PROCEDURE:
            proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_fetch, None)
            proc.set_menu_label(logic.FETCH_LABEL)
            proc.set_documentation(
                "Bring back finished ACE++ results",
                "Inserts results of this GIMP profile that finished after the plug-in ended.",
                name,
            )
        elif name == logic.EXPAND_PROCEDURE:
            proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_expand, None)
            proc.set_menu_label(logic.EXPAND_LABEL)
            proc.set_documentation(
                "ACE++ Expand Canvas",
                "Grows the canvas by the given pixels on each side and generates the new area to fit the image.",
                name,
            )
            _add_arguments(proc, logic.expand_arguments())
        elif name == logic.RECENT_PROCEDURE:
            proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_recent, None)
            proc.set_menu_label(logic.RECENT_LABEL)
            proc.set_documentation(
                "ACE++ Recent Results",
                "Lists the daemon's results for this image and adds a chosen one again as a layer.",
                name,
            )
            proc.add_string_argument(
                "entry", "_Entry", "History entry to add (empty: choose in a window, or the newest)", "", RW
            )
        else:
            action = logic.ACTIONS_BY_PROCEDURE[name]
            proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, run_action, None)
            proc.set_menu_label(action.label)
            proc.set_documentation(
                f"ACE++ {action.label.rstrip('…')}",
                f"Runs the ACE++ task '{action.task}' in the ACE Bridge daemon and adds the result as a new layer.",
                name,
            )
            _add_arguments(proc, logic.procedure_arguments(action))
        proc.set_image_types("*")
        proc.set_sensitivity_mask(
            Gimp.ProcedureSensitivityMask.DRAWABLE
            | Gimp.ProcedureSensitivityMask.DRAWABLES
            | Gimp.ProcedureSensitivityMask.NO_DRAWABLES
        )
        proc.add_menu_path(logic.MENU_PATH)
        proc.set_attribution("ACE Bridge", "ACE Bridge contributors", "2026")
        _add_connection_args(proc)
        return proc


def main() -> None:
    Gimp.main(AceBridgePlugIn.__gtype__, sys.argv)
