"""A user who never touches the guidance slider gets the value each kind of task is meant to run at.

ACE++ tasks run at 50 (the authors' value for all of them); the plain FLUX.1-Fill tasks `generate` and `inpaint`
run at 30 (BFL's default). The task table declares both, and every client that takes its defaults from the table
(the daemon's validation, Krita via `welcome`, GIMP's procedure arguments, the engine itself) follows it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from ace_protocol.geometry import Bounds, Extent
from ace_protocol.tasks import TASKS

from bridge_server.engine.ace_plus import _task_default

REPO = Path(__file__).resolve().parents[2]


def plugin_module(folder: str, name: str):
    """An editor plug-in's pure-logic module, imported from the source tree (as the plug-ins' own tests do)."""
    path = str(REPO / folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


EXPECTED = {
    "instruct": 50.0,
    "local_edit": 50.0,
    "reference_edit": 50.0,
    "subject": 50.0,
    "portrait": 50.0,
    "generate": 30.0,
    "inpaint": 30.0,
    # The FFT model's edit types: 50 in the authors' config/ace_plus_fft.yaml (SAMPLE_ARGS.GUIDE_SCALE).
    "fft_repaint": 50.0,
    "fft_super_resolution": 50.0,
    "fft_colorize": 50.0,
    "fft_control": 50.0,
    "fft_reference": 50.0,
    "fft_reference_edit": 50.0,
}


def test_every_task_has_a_declared_guidance_default():
    assert set(EXPECTED) == set(TASKS)


@pytest.mark.parametrize(("task", "guidance"), EXPECTED.items())
def test_a_job_without_guidance_runs_at_the_tasks_default(task, guidance):
    """The daemon fills what the client left out from the table: 50 for ACE++, 30 for plain Fill."""
    assert TASKS[task].validate_params({})["guidance"] == guidance
    wire = {p["name"]: p for p in TASKS[task].to_wire()["params"]}
    assert wire["guidance"]["default"] == guidance  # what `welcome` tells the editors
    assert (wire["guidance"]["minimum"], wire["guidance"]["maximum"]) == (0.0, 100.0)


@pytest.mark.parametrize("task", ["generate", "inpaint"])
def test_a_user_who_sets_guidance_on_a_fill_task_keeps_their_value(task):
    assert TASKS[task].validate_params({"guidance": 50})["guidance"] == 50.0
    assert TASKS[task].validate_params({"guidance": 3.5})["guidance"] == 3.5


def test_the_plain_fill_tasks_keep_every_other_common_parameter():
    """Only the guidance default differs: the same names, ranges and defaults otherwise."""
    ace = {p.name: p for p in TASKS["local_edit"].params}
    for task in ("generate", "inpaint"):
        for p in TASKS[task].params:
            if p.name in ace and p.name != "guidance":
                assert p == ace[p.name]


@pytest.mark.parametrize(("task", "guidance"), EXPECTED.items())
def test_the_engine_falls_back_to_the_table_when_a_job_has_no_guidance(task, guidance):
    assert _task_default(task, "guidance", 99.0) == guidance
    assert _task_default("no_such_task", "guidance", 99.0) == 99.0


@pytest.mark.parametrize(("task", "guidance"), EXPECTED.items())
def test_gimp_leaves_an_untouched_guidance_to_the_daemon_so_each_task_gets_its_own(task, guidance):
    """GIMP's guidance argument starts at its "unset" value and is then left out of the job; the daemon fills the
    task's default from the table. A value the user sets is sent."""
    gimp = plugin_module("plugins_gimp/ace-bridge", "acegimp_logic")
    action = next(a for a in gimp.ACTIONS if a.task == task)
    assert action.guidance == guidance
    canvas = Extent(96, 64)
    plan = gimp.plan_job(action, gimp.Settings(), canvas, Bounds(8, 8, 32, 32))
    argument = next(a for a in gimp.procedure_arguments(action) if a.name == "guidance")
    params = gimp.build_params(action, gimp.Settings(guidance=argument.default), plan)
    assert "guidance" not in params and TASKS[task].validate_params(params)["guidance"] == guidance
    assert gimp.build_params(action, gimp.Settings(guidance=12.5), plan)["guidance"] == 12.5


def test_krita_leaves_guidance_to_the_daemon_so_fill_tasks_get_30():
    """Krita sends only what the user set; the daemon's table then supplies 30 for generate."""
    from ace_editor.forms import params_from

    params = params_from(TASKS["generate"].to_wire(), {"seed": 1, "steps": 28, "count": 1, "feather": 8})
    assert "guidance" not in params
    assert TASKS["generate"].validate_params(params)["guidance"] == 30.0
