"""What the Krita plugin keeps to itself without touching Krita or Qt: its settings, the docker's form, the
annotation names. Everything editor-neutral (jobs, forms, names, provenance, history) is in ace_editor.

Plain data, unit-tested outside Krita (tests/unit/test_krita_model.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .bundled import VERSION, forms, history, jobs, naming, provenance, settings

# Names the editor tests and the Krita modules import from here.
JobRecord = history.JobRecord
ResultImage = jobs.ResultImage
ProvenanceStore = provenance.ProvenanceStore
provenance_record = provenance.provenance_record
layer_name = naming.layer_name
group_name = naming.group_name

PLUGIN_VERSION = VERSION
CLIENT_NAME = "ace-bridge-krita"
#: Document annotation holding the provenance of every generated layer, keyed by the layer's uniqueId.
PROVENANCE_ANNOTATION = "ace-bridge/provenance"
#: Document annotation with a UUID that identifies a document across switches and reloads.
DOCUMENT_ID_ANNOTATION = "ace-bridge/document-id"
#: The colour space results are exchanged in (protocol: 8-bit sRGB, straight alpha).
EXCHANGE_SPACE = ("RGBA", "U8", "sRGB-elle-V2-srgbtrc.icc")
#: Task parameters the docker has a box for (seed has its own row: random or fixed).
DOCKER_PARAMS = ("steps", "count", "feather")
#: Fractional task parameters the docker shows as a slider among the task's options (the masked tasks' strength).
SLIDER_PARAMS = ("strength",)
SETTINGS_VERSION = 2


class Source(str, Enum):
    """What the plugin reads: the visible image (result goes on top) or the active layer (result goes above it)."""

    IMAGE = "image"
    LAYER = "layer"


def docker_fields(task: dict[str, Any] | None = None) -> dict[str, forms.Field]:
    """The docker's parameter boxes: from the task the daemon announced (its defaults are the daemon's, e.g. the
    panel's default steps), else from the protocol's own table."""
    if task is not None:
        found = {f.name: f for f in forms.fields_for(task, DOCKER_PARAMS)}
        if len(found) == len(DOCKER_PARAMS):
            return found
    return {name: forms.common_field(name) for name in DOCKER_PARAMS}


def option_fields(task: dict[str, Any]) -> list[forms.Field]:
    """The task's own choices and switches (local_edit's mode, reference_edit's face...), from its table entry."""
    return [
        f
        for f in forms.fields_for(task)
        if (f.kind in ("enum", "bool") or f.name in SLIDER_PARAMS) and f.name not in DOCKER_PARAMS
    ]


def _unset(name: str) -> int:
    return int(forms.common_field(name).unset)


@dataclass
class Settings:
    """What the docker persists between sessions. Stored as JSON; unknown keys are dropped, bad values reset.
    A parameter box at its `unset` value (shown as "default (N)") is left out of the job: the daemon decides."""

    version: int = SETTINGS_VERSION
    client_id: str = ""  # stable per Krita profile: the daemon's fairness and redelivery key
    url: str = ""
    token: str = ""
    task: str = "local_edit"
    source: str = Source.IMAGE.value
    seed_mode: str = "random"  # random | fixed
    seed: int = 0
    steps: int = _unset("steps")
    count: int = _unset("count")
    padding: int = -1  # -1: automatic (grows with the selection)
    feather: int = _unset("feather")
    advanced_prompt: bool = False  # send the prompt box as typed (a raw ACE++ prompt) instead of painter_prompt's
    recent_prompts: list = field(default_factory=list)  # RecentPrompts.to_list(), newest first

    def to_json(self) -> str:
        return settings.settings_to_json(self)

    @classmethod
    def from_json(cls, text: str | None) -> Settings:
        loaded = settings.settings_from_json(cls, text, _migrate)
        if loaded.source not in (s.value for s in Source):
            loaded.source = Source.IMAGE.value
        if loaded.seed_mode not in ("random", "fixed"):
            loaded.seed_mode = "random"
        loaded.version = SETTINGS_VERSION
        return loaded

    def param_values(self, seed: int) -> dict[str, Any]:
        """The docker's values for `forms.params_from` (boxes at their unset value are left out there)."""
        return {"seed": seed, "steps": self.steps, "count": self.count, "feather": self.feather}


def _migrate(raw: dict[str, Any]) -> None:
    """Version 1 always sent its boxes' values, which started at the table's defaults (28 steps, 1 image,
    feather 8); such values become "unset", so the daemon's defaults (the panel's default steps) apply."""
    if raw.get("version", 1) < 2:
        for name, old_default in (("steps", 28), ("count", 1), ("feather", 8)):
            if raw.get(name) == old_default:
                raw[name] = _unset(name)


def mask_is_full(mask: bytes) -> bool:
    """A selection that is fully opaque everywhere counts as "no selection" (Krita's select-all)."""
    return bool(mask) and mask.count(255) == len(mask)
