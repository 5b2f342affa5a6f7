"""What the GIMP plug-in does besides talking to GIMP: its actions and their procedure arguments, job planning.

Pure Python (no gi), so it runs in the host's unit tests. The editor-neutral parts (following a job, forms from
the task table, layer names, provenance, profile state) are ace_editor's; the GIMP side (acegimp_gimp.py) reads
pixels into `ImagePayload`s, calls `plan_job`/`build_params`, and writes the results back as layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acegimp_bundled import VERSION, forms, geometry, images, jobs, naming, provenance, tasks
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
ARGUMENT_PARAMS = ("mode", "face", "seed", "steps", "count", "guidance", "feather")
#: GIMP's mnemonics where the label's first letter is taken. GIMP 3.2's procedure dialog warns about every
#: mnemonic used twice, by two arguments or by an argument and one of its buttons: _Reset, _Cancel, _OK,
#: _Load Saved Settings, _Save Settings (`DIALOG_BUTTON_MNEMONICS`). tests/unit/test_gimp_logic.py checks them.
_MNEMONIC = {"seed": "See_d", "steps": "S_teps", "face": "Face refere_nce"}
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


def _param_argument(field: forms.Field) -> Argument:
    label = _MNEMONIC.get(field.name, "_" + field.label)
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
    args = [Argument("string", "prompt", "_Prompt", "What to do ({image} marks the input in the template)", "")]
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
    return forms.params_from(action.spec, values)


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
