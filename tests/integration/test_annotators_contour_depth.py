"""Contour and depth structure modes, as a user gets them: the authors' pickled checkpoints (tiny, random, in
their key layout) go through our converter once; the daemon loads only the safetensors it wrote and runs a local
edit with mode contour / depth through the real engine on the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import engine_fixtures as fx
import numpy as np
import pytest
import torch
from ace_protocol.errors import ErrorCode
from authors_annotators import authors_contour, authors_depth
from PIL import Image
from safetensors.torch import save_file

from bridge_server.engine import recipes
from bridge_server.engine.ace_plus import AcePlusEngine
from bridge_server.engine.annotators import convert, weights
from bridge_server.engine.annotators.dpt import StdConv, _pad_same
from bridge_server.engine.annotators.runner import AnnotatorRunner
from bridge_server.engine.base import EngineError, EngineJob
from bridge_server.models import pull, verify

tiny_root = fx.tiny_root
rgba = fx.rgba


def share_tiny_model(tiny: Path, root: Path) -> Path:
    """A model folder with the tiny model's base, LoRAs and FFT, but no annotators of its own."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("FLUX.1-Fill-dev", "ACE_Plus", "TINY_MODEL.json"):
        (root / name).symlink_to(tiny / name)
    return root


@pytest.fixture(scope="module")
def authors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("authors_ckpts")
    contour_net = authors_contour(folder / "informative_drawing_contour_style.pth")
    depth_state = authors_depth(folder / "dpt_tiny.pt")
    return folder, contour_net, depth_state


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_root, authors):
    folder, _, _ = authors
    root = share_tiny_model(tiny_root, tmp_path_factory.mktemp("with_annotators") / "models")
    code = convert.main(
        [
            "--contour",
            str(folder / "informative_drawing_contour_style.pth"),
            "--depth",
            str(folder / "dpt_tiny.pt"),
            "--out",
            str(root / "annotators"),
        ]
    )
    assert code == 0
    return root


def mask_soft(h: int = 48, w: int = 80) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[8:40, 16:64] = 255
    mask[8:40, 16:24] = 100  # a feathered edge: the composite must use these values, not 0/1
    return mask


def test_converted_contour_computes_what_the_authors_network_computes(converted, authors):
    _, contour_net, _ = authors
    ours = weights.load_annotator("contour", converted / "annotators" / "contour.safetensors")
    x = torch.rand(1, 3, 36, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(x), contour_net(x))


def test_converted_depth_holds_the_authors_tensors_under_our_names(converted, authors):
    folder, _, state = authors
    ours = weights.load_annotator("depth", converted / "annotators" / "depth.safetensors").state_dict()
    pairs = {
        "pretrained.model.patch_embed.backbone.stem.conv.weight": "backbone.conv.weight",
        "pretrained.model.patch_embed.backbone.stages.1.blocks.0.downsample.norm.bias": (
            "backbone.stages.1.0.shortcut.1.bias"
        ),
        "pretrained.model.patch_embed.backbone.stages.1.blocks.1.conv2.weight": "backbone.stages.1.1.conv2.weight",
        "pretrained.model.patch_embed.proj.weight": "proj.weight",
        "pretrained.model.pos_embed": "pos_embed",
        "pretrained.model.blocks.11.attn.qkv.weight": "blocks.11.attn.qkv.weight",
        "pretrained.model.blocks.8.mlp.fc2.bias": "blocks.8.fc2.bias",
        "pretrained.act_postprocess3.0.project.0.weight": "reassemble3.readout.weight",
        "pretrained.act_postprocess4.4.weight": "reassemble4.down.weight",
        "scratch.layer2_rn.weight": "adapt.1.weight",
        "scratch.refinenet1.resConfUnit1.conv2.bias": "fusion.0.skip_unit.conv2.bias",
        "scratch.refinenet4.out_conv.weight": "fusion.3.out.weight",
        "scratch.output_conv.4.bias": "head3.bias",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(ours[mine], state[theirs]), theirs
    # Everything but timm's final norm and ImageNet head (which never reach the depth map) has a place.
    used = [k for k in state if not k.startswith(("pretrained.model.norm.", "pretrained.model.head."))]
    assert len(ours) == len(used)
    manifest = json.loads((converted / "annotators" / "annotators.json").read_text())
    source = (folder / "dpt_tiny.pt").read_bytes()
    assert manifest["depth"]["source_sha256"] == hashlib.sha256(source).hexdigest()
    written = (converted / "annotators" / "depth.safetensors").read_bytes()
    assert manifest["depth"]["sha256"] == hashlib.sha256(written).hexdigest()


def test_weight_standardised_same_padded_conv_matches_the_formula():
    conv = StdConv(3, 4, 7, 2)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    w = conv.weight.detach().double()
    flat = w.reshape(4, -1)
    std_w = (
        (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-8)
    ).reshape_as(w)
    # TF 'SAME' for 64 px, kernel 7, stride 2: 5 pixels of padding, 2 before and 3 after.
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x.double(), (2, 3, 2, 3)), std_w, stride=2)
    with torch.no_grad():
        assert torch.allclose(conv(x).double(), expected, atol=1e-5)
    padded = _pad_same(torch.zeros(1, 1, 32, 32), 3, 2, value=float("-inf"))
    assert padded.shape[-2:] == (33, 33) and torch.isinf(padded[0, 0, -1]).all()  # (0, 1): the max pool's pad


def test_the_converter_refuses_what_it_cannot_place(tmp_path, authors):
    _, _, state = authors
    torch.save({**state, "pretrained.model.dist_token": torch.zeros(1, 1, 64)}, tmp_path / "foreign.pt")
    with pytest.raises(weights.ConversionError, match="dist_token"):
        convert.convert("depth", tmp_path / "foreign.pt", tmp_path / "out")
    # A file named like the MiDaS release carries the start of its SHA-256 in its name: a damaged copy is refused.
    torch.save(state, tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    with pytest.raises(weights.ConversionError, match="SHA-256"):
        convert.convert("depth", tmp_path / "dpt_hybrid-midas-501f0c75.pt", tmp_path / "out")
    assert not (tmp_path / "out" / "depth.safetensors").exists()
    assert convert.main(["--depth", str(tmp_path / "dpt_hybrid-midas-501f0c75.pt"), "--out", str(tmp_path / "ok")]) == 1
    code = convert.main(
        ["--depth", str(tmp_path / "dpt_hybrid-midas-501f0c75.pt"), "--out", str(tmp_path / "ok"), "--skip-name-hash"]
    )
    assert code == 0 and (tmp_path / "ok" / "depth.safetensors").is_file()
    (tmp_path / "code.pt").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would call a function
    with pytest.raises(weights.ConversionError, match="not a plain torch checkpoint"):
        convert.convert("contour", tmp_path / "code.pt", tmp_path / "out")


def test_the_daemon_loads_only_converted_safetensors(tmp_path, authors):
    folder, _, _ = authors
    with pytest.raises(EngineError) as err:
        weights.load_annotator("contour", folder / "informative_drawing_contour_style.pth")
    assert err.value.code == ErrorCode.MODEL_MISSING and "only .safetensors" in err.value.message
    save_file({"x": torch.zeros(2)}, str(tmp_path / "contour.safetensors"))
    with pytest.raises(EngineError) as err:
        weights.load_annotator("contour", tmp_path / "contour.safetensors")
    assert "not a converted contour annotator" in err.value.message
    with pytest.raises(EngineError) as err:
        weights.load_annotator("depth", tmp_path / "depth.safetensors")
    assert "models pull --annotators" in err.value.message


def test_contour_mode_composites_the_authors_contour_inside_the_soft_mask(converted, authors):
    _, contour_net, _ = authors
    image, mask = rgba(80, 48, 4), mask_soft()
    job = EngineJob("local_edit", "{image} an owl", 1, {"mode": "contour"}, image=image, mask=mask)
    plan = recipes.plan_for_job(job, annotate=AnnotatorRunner(converted, device="cpu"))
    # The authors' rule, written out: x / 255 -> network -> * 255, clip, truncate -> Image.composite(soft mask).
    with torch.no_grad():
        out = contour_net(torch.from_numpy(image[..., :3].astype(np.float32) / 255).permute(2, 0, 1)[None])
    grey = (out[0, 0] * 255.0).clip(0, 255).numpy().astype(np.uint8)[:48, :80]
    structure = Image.fromarray(np.repeat(grey[..., None], 3, 2))
    expected = np.asarray(Image.composite(structure, Image.fromarray(image[..., :3]), Image.fromarray(mask)))
    assert plan.mode == "contour" and plan.repainting_scale == 0.5 and plan.adapter == "local"
    np.testing.assert_allclose(plan.source, expected.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
    assert not np.array_equal(expected, image[..., :3])  # the structure really is there


@pytest.fixture(scope="module")
def engine(converted):
    eng = AcePlusEngine(converted, t5_max_length=16, idle_unload_s=None, device="cpu")
    yield eng
    eng.close()


@pytest.mark.parametrize("mode", ["contour", "depth"])
def test_local_edit_with_contour_or_depth_runs_through_the_engine(engine, mode):
    job = EngineJob(
        "local_edit", "{image} a red apple", 3, {"steps": 2, "mode": mode}, image=rgba(80, 48), mask=mask_soft()
    )
    result = engine.run(job, lambda i, n: None, lambda: False)
    assert result.rgb.shape == (48, 80, 3) and result.rgb.dtype == np.uint8
    assert result.info["mode"] == mode and result.info["repainting_scale"] == 0.5


def test_unloading_the_engine_lets_go_of_the_annotators(engine):
    job = EngineJob("local_edit", "x", 1, {"steps": 1, "mode": "contour"}, image=rgba(80, 48), mask=mask_soft())
    engine.run(job, lambda i, n: None, lambda: False)
    assert "contour" in engine.annotators.loaded
    engine.unload()
    assert engine.annotators.loaded == []


def test_fft_control_with_the_depth_annotator_runs_through_the_engine(engine):
    job = EngineJob(
        "fft_control",
        "{image} a house",
        2,
        {"steps": 2, "annotator": "depth"},
        image=rgba(64, 48),
        mask=mask_soft(48, 64),
    )
    result = engine.run(job, lambda i, n: None, lambda: False)
    assert result.info["mode"] == "depth" and result.info["transformer"] == "fft"


def test_without_the_annotator_files_the_job_says_what_to_pull(tiny_root, tmp_path):
    eng = AcePlusEngine(share_tiny_model(tiny_root, tmp_path / "m"), t5_max_length=16, idle_unload_s=None)
    try:
        job = EngineJob("local_edit", "x", 1, {"steps": 2, "mode": "depth"}, image=rgba(80, 48), mask=mask_soft())
        with pytest.raises(EngineError) as err:
            eng.run(job, lambda i, n: None, lambda: False)
    finally:
        eng.close()
    assert err.value.code == ErrorCode.MODEL_MISSING
    assert "`ace-bridge models pull --annotators`" in err.value.message


def test_dry_run_plan_shows_the_mode(converted, tmp_path, isolated_home):
    Image.fromarray(rgba(80, 48)).save(tmp_path / "in.png")
    Image.fromarray(mask_soft()).save(tmp_path / "mask.png")
    args = ["edit", "--task", "local_edit", "--prompt", "{image} x", "--image", str(tmp_path / "in.png")]
    args += ["--mask", str(tmp_path / "mask.png"), "--mode", "depth", "--dry-run"]

    def cli(models: Path, out: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "ACE_BRIDGE_MODELS": str(models)}
        command = [sys.executable, "-m", "bridge_server.cli", *args, str(out)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    run = cli(converted, tmp_path / "plan")
    assert run.returncode == 0, run.stderr
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert (plan["mode"], plan["repainting_scale"], plan["adapter"]) == ("depth", 0.5, "local")
    assert plan["canvas"] == {"width": 80, "height": 48}
    missing = cli(tmp_path / "no_models", tmp_path / "plan2")
    assert missing.returncode == 2 and "models pull --annotators" in missing.stderr


def test_pull_annotators_checks_each_file_against_the_manifest(converted, tmp_path):
    lines: list[str] = []
    pull.pull_annotators(tmp_path / "a", source=converted, echo=lines.append)
    assert weights.load_annotator("depth", tmp_path / "a" / "annotators" / "depth.safetensors") is not None
    rows = {r["name"]: r for r in verify.verify(tmp_path / "a")}
    assert rows["contour annotator"]["ok"] and "width 8" in rows["contour annotator"]["detail"]
    assert rows["depth annotator"]["ok"] and rows["FFT"]["ok"] is None

    def hub(repo: str, name: str, folder: Path, token: str | None) -> None:  # the hub, served from a folder
        data = bytearray((converted / "annotators" / name).read_bytes())
        if name == "depth.safetensors":
            data[-1] ^= 0xFF  # one flipped byte, same size
        (folder / name).write_bytes(bytes(data))

    with pytest.raises(RuntimeError, match="SHA-256"):
        pull.pull_annotators(tmp_path / "b", repo="someone/annotators", download=hub, echo=lines.append)
    assert not (tmp_path / "b" / "annotators" / "depth.safetensors").exists()  # the bad copy is removed
    assert any("someone/annotators/depth.safetensors" in line for line in lines)


def test_an_annotator_that_runs_out_of_gpu_memory_finishes_on_the_cpu(converted, monkeypatch):
    image = rgba(80, 48, 6)[..., :3]
    expected = AnnotatorRunner(converted, device="cpu")("contour", image)
    real, devices = weights.run_contour, []

    def out_of_memory_once(net, rgb, device):
        devices.append(str(device))
        if len(devices) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (a 4096 px region beside FLUX)")
        return real(net, rgb, device)

    monkeypatch.setattr(weights, "run_contour", out_of_memory_once)
    runner = AnnotatorRunner(converted, device=lambda: "cpu")  # the engine passes its device choice as a callable
    np.testing.assert_array_equal(runner("contour", image), expected)
    assert devices == ["cpu", "cpu"]
