"""ace_editor.forms: parameter forms come from the task table, and a form's params leave out what is not set."""

from __future__ import annotations

import pytest
from ace_editor import forms
from ace_protocol.tasks import STEPS, TASKS


def test_fields_follow_the_table_in_order_with_its_ranges_and_help():
    fields = forms.fields_for(TASKS["local_edit"])
    assert [f.name for f in fields] == [p.name for p in TASKS["local_edit"].params]
    steps = next(f for f in fields if f.name == "steps")
    assert (steps.kind, steps.default, steps.minimum, steps.maximum) == ("int", STEPS.default, 1, 100)
    assert "denoising steps" in steps.help and "default 28" in steps.help
    mode = next(f for f in fields if f.name == "mode")
    assert mode.choices == ("repaint", "canny", "mosaic", "recolor", "contour", "depth", "no_preprocess")
    assert mode.unset == "repaint"


def test_fields_from_a_welcome_entry_carry_the_daemons_defaults():
    wire = TASKS["inpaint"].to_wire()
    next(p for p in wire["params"] if p["name"] == "steps")["default"] = 40  # the panel's default steps
    steps = forms.fields_for(wire, ["steps"])[0]
    assert steps.default == 40 and steps.default_text() == "default (40)"
    assert steps.label == "Steps" and forms.common_field("count").label == "Images"


@pytest.mark.parametrize(
    ("name", "unset"), [("steps", 0), ("count", 0), ("feather", -1), ("guidance", -1.0), ("seed", -1), ("face", False)]
)
def test_unset_values_sit_below_the_range_or_at_the_meaning_of_no_choice(name, unset):
    field = forms.common_field(name)
    assert field.unset == unset
    assert field.to_param(unset) is None
    if field.is_number:
        assert field.widget_minimum == min(field.minimum, unset)


def test_params_leave_out_what_is_not_set_and_clamp_the_rest():
    unset = {name: forms.common_field(name).unset for name in ("seed", "steps", "count", "guidance", "feather")}
    assert forms.params_from(TASKS["inpaint"], unset) == {}
    params = forms.params_from(
        TASKS["local_edit"].to_wire(),
        {"seed": 3, "steps": 500, "count": 1, "feather": 8, "width": 512, "mode": "canny", "guidance": None},
    )
    assert params == {"seed": 3, "steps": 100, "count": 1, "feather": 8, "mode": "canny"}
    TASKS["local_edit"].validate_params(params)  # what a plug-in sends passes the daemon's validation
    assert forms.params_from(TASKS["generate"], {"width": 10, "height": 5000}) == {"width": 64, "height": 4096}
    assert forms.params_from(TASKS["local_edit"], {"mode": "nonsense"}) == {}


def test_a_job_with_steps_left_out_gets_the_daemons_default():
    params = forms.params_from(TASKS["inpaint"], {"steps": forms.common_field("steps").unset, "seed": 5})
    assert "steps" not in params
    assert TASKS["inpaint"].validate_params({"steps": 40, **params})["steps"] == 40  # as sessions.py fills it


def test_a_control_layer_with_the_mode_left_at_default_means_the_painters_own_guide():
    """A painter picks a sketch layer for Local Edit and leaves the mode alone: the sketch guides as it is."""
    from ace_editor import forms
    from ace_protocol.tasks import TASKS

    local = TASKS["local_edit"]
    assert forms.with_control_mode(local, {}, True) == {"mode": "no_preprocess"}
    assert forms.with_control_mode(local, {"mode": "repaint"}, True) == {"mode": "no_preprocess"}
    assert forms.with_control_mode(local, {"mode": "canny"}, True) == {"mode": "canny"}  # chosen by hand: kept
    assert forms.with_control_mode(local, {}, False) == {}
    assert forms.with_control_mode(TASKS["reference_edit"], {}, True) == {}  # a reference, not a control
    assert forms.with_control_mode(local.to_wire(), {}, True) == {"mode": "no_preprocess"}  # from `welcome`
