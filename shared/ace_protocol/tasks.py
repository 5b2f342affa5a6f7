"""The task table of protocol v1: what each task needs, its parameters with type, range and default.

The daemon serves this table in `welcome` (filtered to what the loaded model offers); plugins build their UI
from it and the daemon validates every `submit` against it, so the rules live in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request
from .messages import MAX_REFERENCES

MAX_PROMPT_CHARS = 4000
#: Upper bound for the per-job token budget; the daemon may announce a lower one in `welcome`.
MAX_TOKENS_LIMIT = 16384
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: `kind` is int, float, bool, str or enum; `minimum`/`maximum` bound numbers."""

    name: str
    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    description: str = ""
    #: What an editor's form calls it; kept off the wire (editors carry this table themselves).
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ParamSpec:
        """The spec a `welcome` announced (its defaults are the daemon's, e.g. the panel's default steps)."""
        return cls(
            str(wire["name"]),
            str(wire["kind"]),
            wire.get("default"),
            wire.get("minimum"),
            wire.get("maximum"),
            tuple(wire.get("choices") or ()),
            str(wire.get("description") or ""),
        )

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"name": self.name, "kind": self.kind, "default": self.default}
        if self.minimum is not None:
            wire["minimum"] = self.minimum
        if self.maximum is not None:
            wire["maximum"] = self.maximum
        if self.choices:
            wire["choices"] = list(self.choices)
        if self.description:
            wire["description"] = self.description
        return wire

    def validate(self, value: Any) -> Any:
        """Return the value coerced to the parameter's kind, or raise `bad_request` naming it."""
        name = self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad_request(f"parameter '{name}' must be true or false, got {value!r:.40}")
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad_request(f"parameter '{name}' must be an integer, got {value!r:.40}")
            self._check_range(value)
            return value
        if self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(f"parameter '{name}' must be a number, got {value!r:.40}")
            if not math.isfinite(value):
                raise bad_request(f"parameter '{name}' must be a finite number, got {value!r}")
            self._check_range(value)
            return float(value)
        if self.kind == "enum":
            if value not in self.choices:
                raise bad_request(f"parameter '{name}' must be one of {', '.join(self.choices)}, got {value!r:.40}")
            return value
        raise AssertionError(f"unknown parameter kind {self.kind}")

    def _check_range(self, value: float) -> None:
        if self.minimum is not None and value < self.minimum:
            raise bad_request(f"parameter '{self.name}' must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise bad_request(f"parameter '{self.name}' must be at most {self.maximum}, got {value}")


SEED = ParamSpec("seed", "int", -1, -1, SEED_MAX, description="-1 picks a random seed")
STEPS = ParamSpec("steps", "int", 28, 1, 100, description="denoising steps")
#: ACE++ tasks: the authors use 50 for all of them.
GUIDANCE = ParamSpec("guidance", "float", 50.0, 0.0, 100.0, description="FLUX distilled guidance")
#: Plain FLUX.1-Fill-dev tasks (generate, inpaint): 30, BFL's default and what Fill is usually run with.
FILL_GUIDANCE = ParamSpec("guidance", "float", 30.0, 0.0, 100.0, description="FLUX distilled guidance")
COUNT = ParamSpec("count", "int", 1, 1, 8, description="images per job; seeds seed, seed+1, ...", label="Images")
MAX_TOKENS = ParamSpec("max_tokens", "int", 4096, 256, MAX_TOKENS_LIMIT, description="image-token budget of the canvas")
FEATHER = ParamSpec("feather", "int", 8, 0, 256, description="inward feather of the result's alpha, pixels")
WIDTH = ParamSpec("width", "int", 1024, 64, 4096, description="output width for tasks without an image")
HEIGHT = ParamSpec("height", "int", 1024, 64, 4096, description="output height for tasks without an image")
MODE = ParamSpec(
    "mode",
    "enum",
    "repaint",
    choices=("repaint", "canny", "mosaic", "recolor", "contour", "depth", "no_preprocess"),
    description="repaint, or keep structure inside the mask (contour, depth: the authors' annotator networks, "
    "`models pull --annotators`; no_preprocess: the control image, or the image itself, as the guide)",
)
FACE = ParamSpec("face", "bool", False, description="the reference is a face: use the portrait LoRA")
CROP_OFFSET = ParamSpec(
    "crop_offset", "int", 0, 0, 64, description="extra columns dropped after the reference (the authors' code uses 30)"
)
#: local_edit: None (left out) = the mode's own scale, as the authors' demo resets its slider per edit type.
REPAINTING_SCALE = ParamSpec(
    "repainting_scale",
    "float",
    None,
    0.0,
    1.0,
    description="how much of the content inside the mask is greyed out (1 repaints, 0 keeps it); "
    "default: 1 for repaint, 0.5 for the structure modes",
)
#: The FFT tasks: the authors' config/ace_plus_fft.yaml scale of each edit type (repainting 1, the others 0).
FFT_REPAINT_SCALE = ParamSpec(
    "repainting_scale", "float", 1.0, 0.0, 1.0, description=REPAINTING_SCALE.description.split(";")[0]
)
FFT_KEEP_SCALE = ParamSpec("repainting_scale", "float", 0.0, 0.0, 1.0, description=FFT_REPAINT_SCALE.description)
ANNOTATOR = ParamSpec(
    "annotator",
    "enum",
    "none",
    choices=("none", "mosaic", "contour", "depth"),
    description="none: the control image (or the image itself) as given; mosaic: a 64 px mosaic of the image; "
    "contour, depth: the authors' annotator networks run on the image",
)
KEEP_PIXELS = ParamSpec(
    "keep_pixels",
    "bool",
    True,
    description="references keep their pixels: shrunk to the rate times the edit "
    "height only when at least that tall, then padded to the edit height (the FFT model's rule)",
)
KEEP_PIXELS_RATE = ParamSpec(
    "keep_pixels_rate",
    "float",
    0.8,
    0.5,
    1.0,
    description="the largest reference height, as a share of the edit height",
)
#: The masked tasks: image-to-image on the masked region (FluxFill's `strength`); 1.0 generates from noise.
STRENGTH = ParamSpec(
    "strength",
    "float",
    1.0,
    0.05,
    1.0,
    description="how much of the masked area is redrawn: low keeps the painted structure and colours and only "
    "cleans up (fewer steps run), 1 generates it anew",
    label="Strength",
)
#: `TaskSpec.reference_kind`: what a task's `references` are.
REFERENCE = "reference"  # pictures of a subject, face, logo, ... placed left of the edit
CONTROL = "control"  # at most one structure image (edges, depth, a sketch) used inside the mask, not shown beside it

COMMON_PARAMS: tuple[ParamSpec, ...] = (SEED, STEPS, GUIDANCE, COUNT, MAX_TOKENS, FEATHER)
#: `TaskSpec.model` of tasks that run on FLUX.1-Fill alone, without an ACE++ LoRA or the FFT transformer.
BASE_MODEL = "base"
#: The same parameters with the plain-Fill guidance default.
FILL_PARAMS: tuple[ParamSpec, ...] = tuple(FILL_GUIDANCE if p is GUIDANCE else p for p in COMMON_PARAMS)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str
    gimp_procedure: str
    needs_image: bool
    needs_selection: bool
    min_references: int
    max_references: int
    model: str
    prompt_template: str
    params: tuple[ParamSpec, ...] = field(default=COMMON_PARAMS)
    #: REFERENCE (images shown to the model beside the edit) or CONTROL (a structure image for the mask).
    reference_kind: str = REFERENCE
    #: The task can outpaint: an editor grows the canvas (ace_protocol.geometry: expand_pixels, expand_mask with
    #: its feathered seam) and sends the grown image with the new area as the mask; the result is the grown size.
    can_expand: bool = False

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def model_piece(self) -> str | None:
        """The model piece this task needs besides the base model (None: the base model alone)."""
        return None if self.model == BASE_MODEL else self.model

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> TaskSpec:
        """A task as a `welcome` announced it, with the daemon's defaults."""
        return cls(
            str(wire["name"]),
            str(wire.get("label") or wire["name"]),
            str(wire.get("gimp_procedure") or ""),
            bool(wire.get("needs_image")),
            bool(wire.get("needs_selection")),
            int(wire.get("min_references") or 0),
            int(wire.get("max_references") or 0),
            str(wire.get("model") or BASE_MODEL),
            str(wire.get("prompt_template") or ""),
            tuple(ParamSpec.from_wire(p) for p in wire.get("params") or () if isinstance(p, dict)),
            str(wire.get("reference_kind") or REFERENCE),
            bool(wire.get("can_expand")),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "gimp_procedure": self.gimp_procedure,
            "needs_image": self.needs_image,
            "needs_selection": self.needs_selection,
            "min_references": self.min_references,
            "max_references": self.max_references,
            "model": self.model,
            "prompt_template": self.prompt_template,
            "params": [p.to_wire() for p in self.params],
            "reference_kind": self.reference_kind,
            "can_expand": self.can_expand,
        }

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and check every given value; unknown names are refused so typos do not pass silently."""
        if not isinstance(params, dict):
            raise bad_request("'params' must be a map")
        known = {p.name: p for p in self.params}
        for key in params:
            if key not in known:
                raise bad_request(f"task '{self.name}' has no parameter {str(key)!r:.60}; known: {', '.join(known)}")
        return {name: (spec.validate(params[name]) if name in params else spec.default) for name, spec in known.items()}


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "instruct",
            "Edit with Instruction…",
            "python-fu-ace-bridge-instruct",
            True,
            False,
            0,
            0,
            "fft",
            "{image} make it look like a watercolour painting",
            COMMON_PARAMS + (CROP_OFFSET,),
        ),
        TaskSpec(
            "local_edit",
            "Local Edit…",
            "python-fu-ace-bridge-local-edit",
            True,
            True,
            0,
            1,
            "local",
            "Remove the apple in {image} mask.",
            COMMON_PARAMS + (MODE, REPAINTING_SCALE, STRENGTH),
            CONTROL,
            can_expand=True,
        ),
        TaskSpec(
            "reference_edit",
            "Reference Edit…",
            "python-fu-ace-bridge-reference-edit",
            True,
            True,
            1,
            MAX_REFERENCES,
            "subject",
            "The logo is printed on the headphones in {image}.",
            COMMON_PARAMS + (FACE, CROP_OFFSET, STRENGTH),
        ),
        TaskSpec(
            "subject",
            "Subject Generation…",
            "python-fu-ace-bridge-subject",
            False,
            False,
            1,
            MAX_REFERENCES,
            "subject",
            "Display the logo in a minimalist style printed on a mug.",
            COMMON_PARAMS + (WIDTH, HEIGHT, CROP_OFFSET),
        ),
        TaskSpec(
            "portrait",
            "Portrait Generation…",
            "python-fu-ace-bridge-portrait",
            False,
            False,
            1,
            MAX_REFERENCES,
            "portrait",
            "Maintain the facial features, a girl is wearing a red coat in the snow.",
            COMMON_PARAMS + (WIDTH, HEIGHT, CROP_OFFSET),
        ),
        TaskSpec(
            "generate",
            "Generate…",
            "python-fu-ace-bridge-generate",
            False,
            False,
            0,
            0,
            "base",
            "A lighthouse on a cliff at dusk.",
            FILL_PARAMS + (WIDTH, HEIGHT),
        ),
        TaskSpec(
            "inpaint",
            "Inpaint…",
            "python-fu-ace-bridge-inpaint",
            True,
            True,
            0,
            0,
            "base",
            "A vase of sunflowers.",
            FILL_PARAMS + (STRENGTH,),
            can_expand=True,
        ),
        # The FFT model's other edit types, as the authors run them (config/ace_plus_fft.yaml, examples.py).
        TaskSpec(
            "fft_repaint",
            "Regional Repaint (FFT)…",
            "python-fu-ace-bridge-fft-repaint",
            True,
            True,
            0,
            0,
            "fft",
            "Mechanical hands like a robot.",
            COMMON_PARAMS + (FFT_REPAINT_SCALE, STRENGTH),
            can_expand=True,
        ),
        TaskSpec(
            "fft_super_resolution",
            "Masked Super-Resolution (FFT)…",
            "python-fu-ace-bridge-fft-super-resolution",
            True,
            True,
            0,
            0,
            "fft",
            "{image} features a close-up of a young, furry tiger cub on a rock.",
            COMMON_PARAMS + (FFT_KEEP_SCALE, STRENGTH),
        ),
        TaskSpec(
            "fft_colorize",
            "Colourise (FFT)…",
            "python-fu-ace-bridge-fft-colorize",
            True,
            True,
            0,
            0,
            "fft",
            "{image} Beautiful female portrait, natural lighting, highly detailed.",
            COMMON_PARAMS + (FFT_KEEP_SCALE, STRENGTH),
        ),
        TaskSpec(
            "fft_control",
            "Controlled Generation (FFT)…",
            "python-fu-ace-bridge-fft-control",
            True,
            True,
            0,
            1,
            "fft",
            "{image} Beautiful female portrait, robot with a smooth white transparent carbon shell.",
            COMMON_PARAMS + (ANNOTATOR, FFT_KEEP_SCALE, STRENGTH),
            CONTROL,
        ),
        TaskSpec(
            "fft_reference",
            "Reference Generation (FFT)…",
            "python-fu-ace-bridge-fft-reference",
            False,
            False,
            1,
            MAX_REFERENCES,
            "fft",
            "Maintain the facial features, a girl is wearing a neat police uniform and sporting a badge.",
            COMMON_PARAMS + (WIDTH, HEIGHT, KEEP_PIXELS, KEEP_PIXELS_RATE, CROP_OFFSET),
        ),
        TaskSpec(
            "fft_reference_edit",
            "Reference Edit (FFT)…",
            "python-fu-ace-bridge-fft-reference-edit",
            True,
            True,
            1,
            MAX_REFERENCES,
            "fft",
            "The logo is printed on the headphones.",
            COMMON_PARAMS + (FFT_REPAINT_SCALE, KEEP_PIXELS, KEEP_PIXELS_RATE, CROP_OFFSET, STRENGTH),
        ),
    )
}


#: The engine's memory modes (`serve --memory-mode`, the control panel), with what each does.
MEMORY_MODES: dict[str, str] = {
    "auto": "pick from free VRAM when the model loads",
    "gpu": "the whole pipeline on the GPU (about 40 GiB free)",
    "model-offload": "one component at a time on the GPU (about 26 GiB free)",
    "sequential-offload": "layer by layer; slow, for small GPUs",
}


def tasks_taking(name: str) -> list[str]:
    """The tasks that have the parameter `name`, in table order."""
    return [t.name for t in TASKS.values() if t.param(name) is not None]


def param_defaults(name: str) -> dict[str, Any]:
    """The parameter's default per task that takes it (defaults may differ per task, e.g. guidance)."""
    return {t.name: spec.default for t in TASKS.values() if (spec := t.param(name)) is not None}


def param_help(name: str) -> str:
    """One line for a command-line flag or a tooltip: what it does, its range, its default(s) and who takes it."""
    specs = [spec for t in TASKS.values() if (spec := t.param(name)) is not None]
    if not specs:
        raise KeyError(name)
    spec = specs[0]
    parts = [spec.description or spec.title]
    if spec.choices:
        parts.append("one of " + ", ".join(spec.choices))
    elif spec.minimum is not None and spec.maximum is not None:
        parts.append(f"{_number(spec.minimum)}-{_number(spec.maximum)}")
    defaults = param_defaults(name)
    if len(set(map(repr, defaults.values()))) == 1:
        parts.append(f"default {_number(spec.default)}")
    else:
        by_value: dict[str, list[str]] = {}
        for task, value in defaults.items():
            by_value.setdefault(_number(value), []).append(task)
        parts.append("default " + ", ".join(f"{v} for {'/'.join(ts)}" for v, ts in by_value.items()))
    takers = tasks_taking(name)
    if len(takers) < len(TASKS):
        parts.append("tasks: " + ", ".join(takers))
    return "; ".join(parts)


def _number(value: Any) -> str:
    if value is None:  # no fixed default: the daemon decides per job (e.g. repainting_scale follows the mode)
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)
