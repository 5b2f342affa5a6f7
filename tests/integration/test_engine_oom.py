"""An out-of-memory in `auto` mode fails only that job, names the fix, and the next load steps one memory mode
down. The GPU is simulated at the allocation point: the transformer raises torch's OutOfMemoryError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ace_protocol.errors import ErrorCode

import bridge_server.engine.manager as manager
from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineError, EngineJob


def inpaint_job() -> EngineJob:
    image = np.full((48, 64, 4), 200, np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = 255
    return EngineJob(task="inpaint", prompt="a hat", seed=1, params={"steps": 2}, image=image, mask=mask)


def test_oom_in_auto_mode_fails_the_job_and_the_next_load_steps_down(tiny_model_root, monkeypatch):
    engine = AcePlusEngine(tiny_model_root, t5_max_length=16, idle_unload_s=None)
    engine.run(inpaint_job(), lambda *_: None, lambda: False)
    engine._memory_mode = "gpu"  # as if auto had picked the whole-pipeline mode on a GPU

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine._pipe.transformer, "forward", out_of_memory)
    with pytest.raises(EngineError) as failed:
        engine.run(inpaint_job(), lambda *_: None, lambda: False)
    assert failed.value.code is ErrorCode.OUT_OF_MEMORY
    assert "model-offload" in failed.value.message
    assert engine.state()["state"] == "unloaded"  # the next job reloads

    # Whatever free VRAM says next time, auto never goes above the mode it stepped down to.
    monkeypatch.setattr(manager, "vram", lambda: {"free_gib": 1000.0})
    assert engine._resolve_memory_mode("cuda:0") == "model-offload"
    engine.run(inpaint_job(), lambda *_: None, lambda: False)  # and it still runs (here on the CPU)
    engine.close()
