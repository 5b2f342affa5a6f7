"""What the GIMP plug-in does besides talking to GIMP: its actions and their procedure arguments, job planning.

Pure Python (no gi), so it runs in the host's unit tests. The editor-neutral parts (following a job, forms from
the task table, layer names, provenance, profile state) are ace_editor's; the GIMP side (acegimp_gimp.py) reads
pixels into `ImagePayload`s, calls `plan_job`/`build_params`, and writes the results back as layers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from acegimp_bundled import (
    VERSION,
    daemon_history,
    forms,
    geometry,
    history,
    images,
    jobs,
    naming,
    prompting,
    provenance,
    tasks,
)
from acegimp_bundled import settings as stored

Bounds, Extent, context_region = geometry.Bounds, geometry.Extent, geometry.context_region
ImagePayload = images.ImagePayload
TASKS = tasks.TASKS
# The job life cycle and its errors are ace_editor's; acegimp_gimp.py uses them through this module.
UserError, JobCancelled = jobs.UserError, jobs.JobCancelled
HeadlessUi, JobOutcome = jobs.HeadlessUi, jobs.JobOutcome
check_offered_task, describe_error, is_expected_error = jobs.check_offered, jobs.describe_error, jobs.is_expected_error

PLUGIN_VERSION = VERSION
CLIENT_NAME = "ace-bridge-gimp"
MENU_PATH = "<Image>/Filters/ACE++"
FETCH_PROCEDURE = "python-fu-ace-bridge-fetch-results"
FETCH_LABEL = "Fetch Finished Results…"
PARASITE_NAME = provenance.FORMAT
STATE_FILE = "ace-bridge-gimp.json"
#: GParamSpec ints are 32-bit: the plug-in's seed argument stops there.
SEED_ARG_MAX = 2**31 - 1
#: Status lines in GIMP's progress bar start with this.
STATUS_PREFIX = "ACE++: "
#: Task parameters that are procedure arguments (max_tokens and crop_offset stay the daemon's).
ARGUMENT_PARAMS = ("mode", "face", "strength", "seed", "steps", "count", "guidance", "feather")
#: GIMP's mnemonics where the label's first letter is taken. GIMP 3.2's procedure dialog warns about every
#: mnemonic used twice, by two arguments or by an argument and one of its buttons: _Reset, _Cancel, _OK,
#: _Load Saved Settings, _Save Settings (`DIALOG_BUTTON_MNEMONICS`). tests/unit/test_gimp_logic.py checks them.
_MNEMONIC = {"seed": "See_d", "steps": "S_teps", "face": "Face refere_nce", "strength": "Strengt_h"}
DIALOG_BUTTON_MNEMONICS = "rcols"
#: The connection arguments every procedure has (acegimp_gimp.py adds them).
CONNECTION_LABELS = {"url": "Daemon _URL", "token": "To_ken"}


@dataclass(frozen=True)
class Action:
    task: str
    procedure: str
    label: str
    needs_image: bool
    needs_selection: bool
    takes_reference: bool
    param_names: tuple[str, ...]
    guidance: float = 50.0  # the task's default from the table: 50 for ACE++ tasks, 30 for plain Fill
    #: The task cannot run without the layer (subject, reference edit); Local Edit's control layer is optional.
    reference_required: bool = False
    #: The layer is a structure guide used inside the selection (a sketch, line art), not a picture beside it.
    reference_is_control: bool = False

    @property
    def spec(self) -> tasks.TaskSpec:
        return TASKS[self.task]


def _guidance_default(task) -> float:
    spec = task.param("guidance")
    return 50.0 if spec is None else float(spec.default)


ACTIONS: tuple[Action, ...] = tuple(
    Action(
        t.name,
        t.gimp_procedure,
        t.label,
        t.needs_image,
        t.needs_selection,
        t.max_references > 0,
        tuple(p.name for p in t.params),
        _guidance_default(t),
        reference_required=t.min_references > 0,
        reference_is_control=t.reference_kind == tasks.CONTROL,
    )
    for t in TASKS.values()
)
ACTIONS_BY_PROCEDURE = {a.procedure: a for a in ACTIONS}


@dataclass(frozen=True)
class Argument:
    """One procedure argument, as data: acegimp_gimp.py turns each into `proc.add_<kind>_argument(...)`."""

    kind: str  # string | int | double | boolean | choice | layer
    name: str
    label: str  # with GIMP's mnemonic underscore
    help: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str, str], ...] = ()  # (id, label, help)


#: Parameters whose argument is a plain slider over the table's range starting at the table's default (no
#: "unset" value below it): strength 1.0 is today's behaviour, so a job left there is unchanged.
_PLAIN_SLIDERS = ("strength",)


def _param_argument(field: forms.Field) -> Argument:
    label = _MNEMONIC.get(field.name, "_" + field.label)
    if field.name in _PLAIN_SLIDERS:
        return Argument("double", field.name, label, field.help, field.default, field.minimum, field.maximum)
    if field.kind == "enum":
        return Argument(
            "choice",
            field.name,
            label,
            field.help,
            field.default,
            choices=tuple((c, c.capitalize(), "") for c in field.choices),
        )
    if field.kind == "bool":
        return Argument("boolean", field.name, label, field.help, bool(field.default))
    help_text = field.help
    maximum = field.maximum
    if field.name == "seed":
        maximum = min(SEED_ARG_MAX, maximum or SEED_ARG_MAX)
    elif field.unset != field.default:
        help_text = (
            f"{field.help}. {forms.plain_number(field.unset)}: leave it to the daemon (its default, which the "
            "control panel can change)"
        )
    return Argument(
        "int" if field.kind == "int" else "double",
        field.name,
        label,
        help_text,
        field.unset,
        field.widget_minimum,
        maximum,
    )


def procedure_arguments(action: Action) -> list[Argument]:
    """The arguments of an action's procedure (and so its dialog), from the task table. Number arguments start
    at their `unset` value: left there, the parameter is left out of the job and the daemon's default applies."""
    fields = {f.name: f for f in forms.fields_for(action.spec, ARGUMENT_PARAMS)}
    args = [
        Argument("string", "prompt", "_Prompt", "What to change, in your words (e.g. 'make the hat red')", ""),
        Argument(
            "boolean",
            "advanced",
            "Send the prompt as typed (ad_vanced)",
            "Off: the plug-in adds ACE++'s {image} token and the task's wording. On: the prompt goes as typed",
            False,
        ),
        Argument(
            "boolean",
            "reuse",
            "_Bring back the active layer's prompt and seed",
            "Take the prompt and seed from the ACE++ provenance of the active layer (an earlier result)",
            False,
        ),
    ]
    if action.takes_reference:
        if action.reference_is_control:
            args.append(
                Argument(
                    "layer",
                    "reference",
                    "Control la_yer",
                    "Layer used as the structure guide inside the selection (a sketch, line art); optional",
                )
            )
        else:
            args.append(Argument("layer", "reference", "Reference la_yer", "Layer used as the reference image"))
    if action.needs_image:
        args.append(
            Argument(
                "choice",
                "source",
                "Re_ad",
                "What the model sees",
                "visible",
                choices=(
                    ("visible", "Visible image", "The composite of all visible layers; result on top"),
                    ("layer", "Active layer", "Only the active layer; result directly above it"),
                ),
            )
        )
    args += [_param_argument(fields[name]) for name in ARGUMENT_PARAMS if name in fields and name != "feather"]
    if action.needs_image:
        args.append(
            Argument(
                "int",
                "padding",
                "Conte_xt padding",
                "Pixels around the selection sent as context (-1: automatic)",
                -1,
                -1,
                4096,
            )
        )
    args.append(_param_argument(fields["feather"]))
    if "width" in action.param_names:
        args.append(Argument("int", "width", "_Width", "Output width (0: selection or canvas)", 0, 0, 4096))
        args.append(Argument("int", "height", "H_eight", "Output height (0: selection or canvas)", 0, 0, 4096))
    return args


def _unset(name: str) -> Any:
    return forms.common_field(name).unset


@dataclass
class Settings:
    """The procedure's arguments, as plain values (the adapter reads them from the GIMP config). Numbers at their
    `unset` value (see `procedure_arguments`) are left out of the job."""

    prompt: str = ""
    seed: int = _unset("seed")
    steps: int = _unset("steps")
    count: int = _unset("count")
    guidance: float | None = None  # None (or its unset value): the daemon's default for the task
    padding: int = -1  # -1: automatic (grows with the selection)
    feather: int = _unset("feather")
    source: str = "visible"  # visible | layer
    mode: str = "repaint"
    face: bool = False
    strength: float = _unset("strength")
    advanced: bool = False  # the prompt goes to ACE++ as typed (else prompting.painter_prompt words it)
    reuse: bool = False  # prompt and seed from the active layer's provenance record
    width: int = 0  # 0: from the selection, else the canvas
    height: int = 0
    url: str = ""
    token: str = ""


@dataclass(frozen=True)
class JobPlan:
    """What to read and where the result goes."""

    region: Bounds  # context region sent as the image (or the output area for tasks without an image)
    selection: Bounds | None
    read_image: bool
    placement: str  # "top" (visible image read) or "above-active" (only the active layer read)


def selection_needed_message(action: Action) -> str:
    return (
        f"{action.label.rstrip('…')} changes only the selected area: make a selection first "
        "(for example with the Rectangle or Free Select tool), then run it again."
    )


def plan_job(action: Action, settings: Settings, canvas: Extent, selection: Bounds | None) -> JobPlan:
    """Decide region and placement; raises UserError when the task needs a selection and there is none."""
    if selection is not None and selection.is_empty:
        selection = None
    if action.needs_selection and selection is None:
        raise UserError(selection_needed_message(action))
    placement = "above-active" if settings.source == "layer" and action.needs_image else "top"
    if action.needs_image:
        padding = None if settings.padding < 0 else settings.padding
        region = context_region(selection, canvas, padding)
        return JobPlan(region, selection, True, placement)
    # Tasks without an input image generate into the selection's bounds, or the whole canvas.
    region = selection.clamp(canvas) if selection is not None else Bounds(0, 0, canvas.width, canvas.height)
    return JobPlan(region, selection, False, placement)


def full_mask(region: Bounds) -> ImagePayload:
    return ImagePayload(region.width, region.height, "gray8", b"\xff" * (region.width * region.height))


def build_params(action: Action, settings: Settings, plan: JobPlan) -> dict[str, Any]:
    """The `params` of `submit`: the task's parameters that are set (see `forms.params_from`); the output size of
    tasks without an image follows the selection or canvas unless given."""
    values: dict[str, Any] = {name: getattr(settings, name) for name in ARGUMENT_PARAMS}
    values["width"] = int(settings.width) or plan.region.width
    values["height"] = int(settings.height) or plan.region.height
    params = forms.params_from(action.spec, values)
    strength = action.spec.param("strength")
    if strength is not None and params.get("strength", strength.default) >= strength.default:
        params.pop("strength", None)  # the slider left at 1: today's job, the daemon's default
    return params


def job_prompt(action: Action, settings: Settings, params: dict[str, Any]) -> str:
    """What ACE++ gets: the painter's words with the task's wording and `{image}` (ace_editor.prompting), or the
    prompt as typed with `advanced`."""
    mode = params.get("mode", settings.mode if "mode" in action.param_names else None)
    return prompting.painter_prompt(action.task, settings.prompt, advanced=settings.advanced, mode=mode)


def reuse_from_record(settings: Settings, record: dict[str, Any] | None) -> Settings:
    """`settings` with the prompt and seed of a result layer's provenance record (the `reuse` argument)."""
    if not record:
        raise UserError(
            "The active layer has no ACE++ provenance to reuse: select a layer the plug-in made (its name starts "
            "with [ACE++]), or untick “Bring back the active layer's prompt and seed”."
        )
    prompt = record.get("prompt")
    seed = record.get("seed")
    changed = replace(settings)
    if isinstance(prompt, str) and prompt:
        changed.prompt = prompt
    if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        changed.seed = seed
    return changed


# ------------------------------------------------------------------ recent prompts

PROMPTS_FILE = "ace-bridge-gimp-prompts.json"


class RecentPromptFile:
    """The painter's recent prompts (ace_editor's RecentPrompts) kept in a JSON list in the GIMP profile."""

    def __init__(self, path: Path, limit: int = 15) -> None:
        self.path = Path(path)
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = []
        self.recent = history.RecentPrompts.from_list(stored, limit)

    @property
    def prompts(self) -> list[str]:
        return self.recent.to_list()

    def add(self, prompt: str) -> None:
        before = self.recent.to_list()
        self.recent.add(prompt)
        if self.recent.to_list() != before:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.recent.to_list(), indent=1), encoding="utf-8")
            os.replace(tmp, self.path)


# ------------------------------------------------------------------ preview, then apply


@dataclass
class ResultPicker:
    """The results of one job shown as thumbnails: at most one is previewed on the canvas at a time; Apply keeps
    the previewed one (or the first), Discard keeps none. The editor side follows the steps it returns."""

    count: int
    shown: int | None = None
    finished: bool = False

    def show(self, index: int) -> tuple[int | None, int | None]:
        """Preview result `index`: (the preview to remove or None, the one to add or None when already shown)."""
        if self.finished:
            raise RuntimeError("the results were applied or discarded already")
        if not 0 <= index < self.count:
            raise IndexError(f"result {index} of {self.count}")
        if index == self.shown:
            return None, None
        old, self.shown = self.shown, index
        return old, index

    def apply(self) -> int | None:
        """The result to keep (the previewed one, else the first), None when there is none."""
        self.finished = True
        if self.count == 0:
            return None
        return self.shown if self.shown is not None else 0

    def discard(self) -> None:
        self.finished = True


PREVIEW_PREFIX = "[ACE++ preview] "


def preview_layer_name(task: str, prompt: str, seed: int | None, index: int, count: int) -> str:
    """The temporary layer's name: a result layer's name marked as a preview."""
    return PREVIEW_PREFIX + layer_name(task, prompt, seed, index, count).removeprefix("[ACE++] ")


def thumbnail_size(width: int, height: int, box: int = 160) -> tuple[int, int]:
    """A thumbnail's size inside a `box`-pixel square, keeping the aspect ratio (never 0)."""
    scale = min(1.0, box / max(1, width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# ------------------------------------------------------------------ expand canvas

EXPAND_PROCEDURE = "python-fu-ace-bridge-expand-canvas"
EXPAND_LABEL = "Expand Canvas…"
#: Outpainting tasks in the order the action prefers them (plain Fill first: it fits new area best).
EXPAND_TASKS = tuple(t.name for t in sorted(TASKS.values(), key=lambda t: t.name != "inpaint") if t.can_expand)
#: The sides' arguments: name, label with its mnemonic, help.
EXPAND_SIDES = (
    ("left", "L_eft", "Pixels added on the left"),
    ("top", "_Above", "Pixels added above"),
    ("right", "Ri_ght", "Pixels added on the right"),
    ("bottom", "_Below", "Pixels added below"),
)


def expand_arguments() -> list[Argument]:
    """The Expand Canvas procedure's arguments: the prompt, the four sides, and seed/steps/count from the table."""
    fields = {f.name: f for f in forms.fields_for(TASKS[EXPAND_TASKS[0]], ("seed", "steps", "count"))}
    args = [Argument("string", "prompt", "_Prompt", "What the new area shows (empty: continue the picture)", "")]
    args += [
        Argument("int", name, label, help_text, 0, 0, geometry.EXPAND_MAX) for name, label, help_text in EXPAND_SIDES
    ]
    return args + [_param_argument(fields[name]) for name in ("seed", "steps", "count")]


def expand_task(offered_tasks: list[Any]) -> str:
    """The outpainting task to run: the first of EXPAND_TASKS the daemon offers."""
    names = {t.get("name") if isinstance(t, dict) else str(t) for t in offered_tasks}
    for name in EXPAND_TASKS:
        if name in names:
            return name
    raise UserError(
        "The daemon's model offers no task that can expand a canvas ("
        + ", ".join(EXPAND_TASKS)
        + "): load the ACE++ model in the control panel."
    )


@dataclass(frozen=True)
class ExpandPlan:
    """A canvas grown by `margins`: the grown size, where the old canvas lands, and the pixels to send."""

    margins: geometry.Margins
    canvas: Extent
    grown: Extent
    image: ImagePayload
    mask: ImagePayload


def plan_expand(canvas: Extent, margins: tuple[int, int, int, int], visible_rgba: bytes) -> ExpandPlan:
    """The outpainting job of an "Expand canvas" (ace_protocol.geometry: edge pixels repeated outward as the start,
    the new area plus a feathered seam as the mask). Raises UserError for margins a person must change."""
    try:
        grow = geometry.Margins.parse(",".join(str(int(v)) for v in margins))
    except ValueError as exc:
        raise UserError(f"Expand Canvas: {exc}") from None
    grown = geometry.expanded_extent(canvas, grow)
    pixels = geometry.expand_pixels(visible_rgba, canvas, grow, 4)
    mask = geometry.expand_mask(canvas, grow)
    return ExpandPlan(
        grow,
        canvas,
        grown,
        ImagePayload(grown.width, grown.height, "rgba8", pixels),
        ImagePayload(grown.width, grown.height, "gray8", mask),
    )


# ------------------------------------------------------------------ recent results (the daemon's history)

RECENT_PROCEDURE = "python-fu-ace-bridge-recent-results"
RECENT_LABEL = "Recent Results…"
EDITOR_LABEL = "GIMP"
DaemonHistory, HistoryError = daemon_history.DaemonHistory, daemon_history.HistoryError


def job_label(document: str, region: Bounds | tuple[int, int, int, int]) -> str:
    """The submit label: the panel shows it, and Recent Results finds this document's results (and their place)
    by it."""
    return daemon_history.job_label(EDITOR_LABEL, document, tuple(region))


def results_for_document(entries: list[dict[str, Any]], document: str) -> list[dict[str, Any]]:
    return daemon_history.entries_for(entries, EDITOR_LABEL, document)


def result_place(entry: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """Where a history entry's result was made for in its document (None: unknown, e.g. a CLI job)."""
    place = daemon_history.parse_label(str(entry.get("label", "")))
    return place.region if place is not None else None


def entry_title(entry: dict[str, Any]) -> str:
    """One line for a history entry in the Recent Results list."""
    prompt = naming.short_prompt(str(entry.get("prompt", "")), 40)
    seed = entry.get("seed")
    return f"{jobs.task_title(str(entry.get('task', '?')))}: {prompt or '(no prompt)'}" + (
        f" (seed {seed})" if seed is not None else ""
    )


def record_from_entry(entry: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance record of a result brought back from the history, as a parasite of its new layer."""
    prov = dict(meta.get("provenance") or {})
    region = result_place(entry) or (0, 0, int(meta.get("width") or 0), int(meta.get("height") or 0))
    return provenance.provenance_record(
        str(prov.get("task", entry.get("task", "result"))),
        str(prov.get("prompt", entry.get("prompt", ""))),
        prov.get("seed", entry.get("seed")),
        dict(prov.get("params") or {}),
        region,
        "history",
        str(prov.get("job_id", "")),
        prov,
        int(prov.get("index", 0) or 0),
        int(prov.get("count", 1) or 1),
    )


def check_offered(action: Action, offered_tasks: list[Any], engine: dict[str, Any] | None = None) -> None:
    """Raise UserError when the daemon's loaded model does not offer the action's task."""
    check_offered_task(action.task, offered_tasks, engine)


def queued_text(position: int | None) -> str:
    return STATUS_PREFIX + jobs.queued_text(position)


def wait_for_job(job: Any, ui: jobs.Ui, *, event_timeout_s: float | None = None) -> jobs.JobOutcome:
    """Follow a job in GIMP's main loop (ace_editor's follower, with GIMP's status prefix)."""
    return jobs.wait_for_job(job, ui, event_timeout_s=event_timeout_s, prefix=STATUS_PREFIX)


layer_name, group_name = naming.layer_name, naming.group_name


def provenance_bytes(result: Any, request: dict[str, Any]) -> bytes:
    """The layer parasite: one provenance record (ace_editor's) of a result event and the request it answers."""
    record = provenance.provenance_record(
        request.get("task", "result"),
        request.get("prompt", ""),
        getattr(result, "seed", None),
        request.get("params") or {},
        request.get("region") or (),
        request.get("source", ""),
        getattr(result, "job_id", "") or "",
        getattr(result, "provenance", None) or {},
        getattr(result, "index", 0),
        getattr(result, "count", 1),
    )
    return provenance.record_bytes(record)


parse_provenance = provenance.parse_record


class ProfileState(stored.ProfileState):
    """ace_editor's profile state (client id, session, jobs whose results are not inserted yet) with GIMP's
    client id prefix; the state file is `<profile>/STATE_FILE`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "gimp")
