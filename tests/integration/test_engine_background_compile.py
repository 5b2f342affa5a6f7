"""`serve --compile` on a fresh cache: the first painter's job does not wait for torch.compile. The warm-up compiles
in the background; a job that arrives meanwhile runs uncompiled on the same weights, and once the compile is done
jobs run compiled with the same picture."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from integration_helpers import ellipse_mask, gradient_image

from bridge_server.engine import background_compile
from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineJob


def job() -> EngineJob:
    return EngineJob(
        task="inpaint",
        prompt="a hat",
        seed=3,
        params={"steps": 2},
        image=gradient_image(64, 48),
        mask=ellipse_mask(64, 48),
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # torch.compile on 2 shared CPU cores
def test_a_job_runs_uncompiled_while_the_warm_up_compiles_then_compiled(tiny_model_root, tmp_path, monkeypatch):
    import torch
    from torch._dynamo.utils import counters

    in_compile, go_on = threading.Event(), threading.Event()
    real_compiling = background_compile.CompileGate.compiling

    def compiling_when_told(self):
        # The real gate, held at its door so the test can run a job while the compile has not even begun.
        in_compile.set()
        assert go_on.wait(120)
        return real_compiling(self)

    monkeypatch.setattr(background_compile.CompileGate, "compiling", compiling_when_told)
    torch._dynamo.reset()
    counters.clear()
    engine = AcePlusEngine(
        tiny_model_root,
        t5_max_length=16,
        idle_unload_s=None,
        optimizations={"attention": "off", "compile": True},
        compile_cache=tmp_path / "compile-cache",
    )
    timings: dict = {}
    warm = threading.Thread(target=lambda: timings.update(engine.warm_up(sizes=((64, 48),))))
    warm.start()
    try:
        assert in_compile.wait(120)
        state = engine.state()
        assert state["state"] == "warming up" and state["load"]["stage"] == "compiling for 64x48"
        eager = engine.run(job(), lambda *_: None, lambda: False).rgb  # does not wait for the compile
        assert counters["stats"]["unique_graphs"] == 0  # nothing was compiled for it
        assert warm.is_alive()
    finally:
        go_on.set()
        warm.join(300)
    assert list(timings) == ["64x48"] and engine.state()["state"] == "loaded"
    assert counters["stats"]["unique_graphs"] > 0  # the warm-up compiled the blocks
    graphs = counters["stats"]["unique_graphs"]
    compiled = engine.run(job(), lambda *_: None, lambda: False).rgb
    assert counters["stats"]["unique_graphs"] == graphs  # same size: the warm-up's graphs, no new compile
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 2  # same picture (float reordering only)
    assert (tmp_path / "compile-cache" / "artifacts.bin").stat().st_size > 0
    engine.close()
