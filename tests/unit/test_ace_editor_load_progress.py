"""ace_editor.daemon: the status line both editors show while the daemon puts the model into memory."""

from __future__ import annotations

from ace_editor import daemon


def installed(load: dict) -> dict:
    return {"installed": True, "gpu": {"usable": True}, "pull": {"state": "idle"}, "load": load}


def test_loading_stages_become_a_status_line_with_a_progress_bar():
    state = installed({"state": "loading", "stage": "transformer", "step": 1, "steps": 5, "elapsed_s": 12.4})
    advice = daemon.advice(state)
    assert (advice.state, advice.title) == ("loading", "Loading the model…")
    assert advice.detail == "transformer (1 of 5), 12 s so far" and advice.fraction == 0.0
    assert advice.busy and not advice.can_download and daemon.keep_polling(state)
    later = daemon.advice(installed({"state": "loading", "stage": "gpu", "step": 4, "steps": 5, "tier": "gguf-q4"}))
    assert later.detail == "gpu (4 of 5), tier gguf-q4" and later.fraction == 0.6


def test_a_first_start_that_compiles_says_so():
    advice = daemon.advice(installed({"state": "warming up", "stage": "compiling for 1440x720", "step": 1, "steps": 2}))
    assert advice.state == "loading" and advice.title.startswith("Preparing the model (first start compiles)")
    assert advice.detail.startswith("compiling for 1440x720 (1 of 2)")


def test_a_loaded_unloaded_or_older_daemon_is_simply_ready():
    for load in ({"state": "loaded", "elapsed_s": 3.0}, {"state": "unloaded"}, {}):
        state = installed(load)
        assert daemon.advice(state).state == "ready" and not daemon.keep_polling(state)
    old_daemon = {"installed": True, "gpu": {"usable": True}}  # no `load` field at all
    assert daemon.advice(old_daemon).state == "ready"


def test_no_gpu_and_a_running_download_still_win_over_loading():
    no_gpu = {"installed": True, "gpu": {"usable": False}, "load": {"state": "loading", "step": 1, "steps": 3}}
    assert daemon.advice(no_gpu).state == "no_gpu"
    pulling = {"installed": False, "pull": {"state": "running", "done_bytes": 1, "total_bytes": 2}}
    assert daemon.advice(pulling).state == "downloading" and daemon.keep_polling(pulling)
