"""Parameter forms built from the task table, and the `params` of a submit built back from a form.

A form never invents a default: each field shows the table's default (or the daemon's, when built from a
`welcome`), and a number field has one extra value below its range, `unset`, that means "leave it out". A
parameter left out gets the daemon's default, so a setting changed in the control panel (default steps) applies
to editor jobs too. Choices and switches cannot be unset in a widget; a value equal to the default is left out,
which gives the same job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .protocol import tasks


@dataclass(frozen=True)
class Field:
    """One form field for a task parameter."""

    name: str
    kind: str  # int | float | bool | enum
    label: str
    help: str
    default: Any
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...]
    #: The widget value that means "not set": numbers one below their range, except where the table's default is
    #: already a negative "no choice" at the bottom of the range (seed -1: random); bools and choices: the default.
    unset: Any

    @property
    def is_number(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def widget_minimum(self) -> float | None:
        """The lowest value a spin box needs: the `unset` value included."""
        if not self.is_number or self.minimum is None:
            return self.minimum
        return float(min(self.minimum, self.unset))

    def default_text(self) -> str:
        """What a spin box shows at its `unset` value, e.g. `default (28)`."""
        return f"default ({plain_number(self.default)})"

    def to_param(self, value: Any) -> Any | None:
        """The value to send, or None to leave the parameter out. Numbers are clamped into the range."""
        if value is None or value == self.unset:
            return None
        if self.is_number and not isinstance(value, bool):
            if self.minimum is not None:
                value = max(self.minimum, value)
            if self.maximum is not None:
                value = min(self.maximum, value)
            return int(value) if self.kind == "int" else float(value)
        if self.kind == "enum" and value not in self.choices:
            return None
        return value


def field_for(spec: tasks.ParamSpec) -> Field:
    """The form field of one parameter spec (from the table, or from a `welcome` via `ParamSpec.from_wire`)."""
    return Field(
        spec.name,
        spec.kind,
        _label(spec),
        tasks.param_help(spec.name) if _known(spec.name) else spec.description,
        spec.default,
        spec.minimum,
        spec.maximum,
        spec.choices,
        _unset(spec),
    )


def fields_for(task: tasks.TaskSpec | dict[str, Any], names: Iterable[str] | None = None) -> list[Field]:
    """The fields of a task (a TaskSpec, or a task-table entry from `welcome`), in table order; `names` picks."""
    spec = task if isinstance(task, tasks.TaskSpec) else tasks.TaskSpec.from_wire(task)
    wanted = None if names is None else set(names)
    return [field_for(p) for p in spec.params if wanted is None or p.name in wanted]


def common_field(name: str) -> Field:
    """A field from the protocol's own table, for a form shared by every task (e.g. a docker's steps box)."""
    for task in tasks.TASKS.values():
        spec = task.param(name)
        if spec is not None:
            return field_for(spec)
    raise KeyError(name)


def params_from(task: tasks.TaskSpec | dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The `params` of a submit: only the task's parameters, only the ones set (see `Field.to_param`)."""
    out: dict[str, Any] = {}
    for field in fields_for(task, values):
        value = field.to_param(values[field.name])
        if value is not None:
            out[field.name] = value
    return out


#: ACE++'s "use my own structure image as it is" mode (local_edit's no_preprocess).
OWN_CONTROL_MODE = "no_preprocess"


def with_control_mode(
    task: tasks.TaskSpec | dict[str, Any], params: dict[str, Any], has_control: bool
) -> dict[str, Any]:
    """A control layer picked while the mode is left at its default means the user's own guide, used as it is:
    the params with `mode` set to no_preprocess. A mode chosen by hand is kept (the daemon says if they clash)."""
    spec = task if isinstance(task, tasks.TaskSpec) else tasks.TaskSpec.from_wire(task)
    mode = spec.param("mode")
    if not has_control or spec.reference_kind != tasks.CONTROL or mode is None:
        return params
    if OWN_CONTROL_MODE not in mode.choices or params.get("mode", mode.default) != mode.default:
        return params
    return {**params, "mode": OWN_CONTROL_MODE}


def _unset(spec: tasks.ParamSpec) -> Any:
    if spec.kind in ("int", "float") and spec.minimum is not None:
        if spec.default == spec.minimum and spec.default < 0:  # the table's own "no choice" (seed -1: random)
            return spec.default
        return int(spec.minimum) - 1 if spec.kind == "int" else float(spec.minimum) - 1.0
    return spec.default


def _label(spec: tasks.ParamSpec) -> str:
    if spec.label:
        return spec.label
    table = next((p for t in tasks.TASKS.values() for p in t.params if p.name == spec.name), None)
    return table.title if table is not None else spec.title


def _known(name: str) -> bool:
    return any(t.param(name) is not None for t in tasks.TASKS.values())


def plain_number(value: Any) -> str:
    """`28` for 28.0: how a default reads in a label or a help text (`unset`: the daemon decides per job)."""
    if value is None:
        return "unset"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
