"""Files: weights load only from safetensors (never unpickled), no endpoint takes a path from a client, and history
names cannot leave the history folder, symlinks included."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.base import EngineError, EngineJob
from bridge_server.store.history import History, HistoryUnavailable


def test_a_model_folder_with_pickled_weights_is_refused_and_never_unpickled(tiny_model_root, tmp_path, monkeypatch):
    root = tmp_path / "models"
    shutil.copytree(tiny_model_root, root, symlinks=True)
    transformer = root / "FLUX.1-Fill-dev" / "transformer"
    weights = next(transformer.glob("*.safetensors"))
    torch.save(load_file(weights), transformer / "diffusion_pytorch_model.bin")  # what a hostile download holds
    weights.unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a model file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    engine = AcePlusEngine(root, t5_max_length=16, idle_unload_s=None)
    job = EngineJob(task="generate", prompt="x", seed=1, params={"steps": 1, "width": 64, "height": 64})
    with pytest.raises(EngineError) as refused:
        engine.run(job, lambda *_: None, lambda: False)
    assert "diffusion_pytorch_model.safetensors" in refused.value.message  # names the file it wants
    assert "torch.load" not in refused.value.message
    engine.close()


def test_history_names_cannot_leave_the_folder(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not yours")
    history = History(tmp_path / "history")
    history.open()
    for name in ("../secret", "/etc/passwd", "..", "a/../../secret", "0" * 32 + "-0/../../secret", ""):
        with pytest.raises(KeyError):
            history.path_for(name, ".png")
    planted = "0" * 32 + "-0"
    (history.root / f"{planted}.png").symlink_to(outside)  # a link planted inside the folder
    with pytest.raises(HistoryUnavailable):
        history.load_image(planted)
    history.save("1" * 32 + "-0", np.zeros((4, 4, 4), np.uint8), {"provenance": {}})
    assert (history.root / ("1" * 32 + "-0.png")).is_file()


def test_no_endpoint_takes_a_path_from_a_client(thread_daemon_factory, tmp_path):
    daemon = thread_daemon_factory()
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve me")
    dynamic = []

    def collect(app):
        # The panel is a sub-app: walk into it (its resources already carry the /panel prefix).
        for resource in app.router.resources():
            info = resource.get_info()
            if "formatter" in info:
                dynamic.append(info["formatter"])
            elif "app" in info:
                collect(info["app"])

    collect(daemon.app)
    # Every dynamic route names a fixed kind of thing (a static asset, a history entry), never a file path.
    assert sorted(dynamic) == sorted(
        [
            "/panel/static/{name}",
            "/panel/api/thumb/{entry}",
            "/panel/api/image/{entry}",
            "/panel/api/meta/{entry}",
            "/panel/api/before/{entry}",
        ]
    )
    base = f"http://127.0.0.1:{daemon.port}"
    for template in dynamic:
        key = template[template.index("{") + 1 : template.index("}")]
        for hostile in (
            "..%2F..%2F..%2Fetc%2Fpasswd",
            "%2Fetc%2Fpasswd",
            str(secret).replace("/", "%2F"),
            "..%2Fconfig%2Ftoken",
        ):
            url = base + template.replace("{" + key + "}", hostile)
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    body = response.read()
                    assert b"do not serve me" not in body and b"root:" not in body
                    assert daemon.token.encode() not in body
            except urllib.error.HTTPError as refused:
                assert refused.code in (400, 401, 403, 404)
