"""The task table carries the painter's options: strength on every masked task, which tasks can expand."""

from __future__ import annotations

import pytest
from ace_protocol.errors import ProtocolError
from ace_protocol.tasks import TASKS, TaskSpec

from bridge_server.engine import recipes
from bridge_server.engine.base import EngineJob


def test_strength_is_a_parameter_of_exactly_the_masked_tasks():
    for spec in TASKS.values():
        strength = spec.param("strength")
        assert (strength is not None) == spec.needs_selection, spec.name
        if strength is not None:
            assert (strength.default, strength.minimum, strength.maximum) == (1.0, 0.05, 1.0)
            with pytest.raises(ProtocolError, match="strength"):
                spec.validate_params({"strength": 0.0})
            assert spec.validate_params({"strength": 0.4})["strength"] == 0.4


def test_can_expand_goes_over_the_wire():
    assert {t.name for t in TASKS.values() if t.can_expand} == {"inpaint", "local_edit", "fft_repaint"}
    for spec in TASKS.values():
        assert TaskSpec.from_wire(spec.to_wire()).can_expand == spec.can_expand
    assert TaskSpec.from_wire({"name": "older"}).can_expand is False  # an older daemon: no expand


def test_the_plan_carries_the_strength_and_the_unmasked_source():
    import numpy as np

    image = np.full((32, 48, 4), 200, np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 8:40] = 255
    job = EngineJob(task="inpaint", prompt="x", seed=1, params={"strength": 0.5}, image=image, mask=mask)
    plan = recipes.plan_for_job(job)
    assert plan.strength == 0.5 and recipes.plan_json(plan)["strength"] == 0.5
    assert plan.source is not None and plan.source.shape == plan.canvas.shape
    assert (plan.canvas[16, 24] == 0).all() and (plan.source[16, 24] > 0.5).all()  # greyed vs the painted pixels
