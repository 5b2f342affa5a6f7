"""The plugin's document adapters inside real Krita, headless (kritarunner, QT_QPA_PLATFORM=offscreen).

Story covered (issue 4): reading the active layer / visible image over the context region with a soft elliptical
selection on a layer that does not start at the origin; the result inserted at the region's offset, directly
above the active layer or on top of the stack, a group for several results (first visible); outside-the-selection
pixels and the source layers unchanged; provenance that survives save and reload; a 16-bit document read through
a converted copy and written back in its own colour space; results routed by the document id.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from krita_runner import KritaInstall, install_params, install_plugin, require, run_script

pytestmark = pytest.mark.editors


@pytest.fixture(scope="module")
def krita_home(tmp_path_factory, request):
    """One profile per Krita install and module: the first start builds Krita's resource database (~8 s)."""
    homes: dict[str, tuple[Path, Path]] = {}

    def get(install: KritaInstall) -> tuple[Path, Path]:
        if install.name not in homes:
            home = tmp_path_factory.mktemp(f"krita-{install.name}")
            homes[install.name] = (home, install_plugin(home))
        return homes[install.name]

    return get


def _assert_checks(result: dict) -> None:
    failed = {k: v[1] for k, v in result["checks"].items() if not v[0]}
    assert not failed, f"failed in Krita: {failed}\n--- output tail ---\n{result['output'][-3000:]}"
    assert result["rc"] in (0,), result["output"][-3000:]


@pytest.mark.parametrize("install", install_params())
def test_adapters_with_stand_in_result(install, krita_home):
    install = require(install)
    home, pykrita = krita_home(install)
    config = {"paths": [install.path(pykrita), install.path(pykrita / "ace_bridge" / "_vendor")]}
    result = run_script(install, home, "krita_headless_checks", config)
    _assert_checks(result)
    assert len(result["checks"]) >= 20


@pytest.mark.parametrize("install", install_params())
def test_adapters_with_real_daemon(install, krita_home, demo_daemon):
    """The same checks with the result of a real `ace-bridge serve --demo` job (tiny model, 2 steps)."""
    install = require(install)
    daemon = demo_daemon
    home, pykrita = krita_home(install)
    config = {
        "paths": [install.path(pykrita), install.path(pykrita / "ace_bridge" / "_vendor")],
        "daemon": {"url": daemon.url, "token": daemon.token},
    }
    result = run_script(install, home, "krita_headless_checks", config, timeout=240)
    _assert_checks(result)
    for name in ("daemon_tasks", "daemon_events", "result_alpha_zero_outside_selection"):
        assert result["checks"][name][0], result["checks"][name]
