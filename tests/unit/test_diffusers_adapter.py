"""The diffusers adapter (bridge_server/engine/diffusers_adapter.py): every private diffusers call the daemon makes,
checked on the versions it names. A diffusers upgrade fails the first test loudly: re-run this file and the engine
tests on the new version, fix the adapter, then add the version to CHECKED_VERSIONS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from bridge_server.engine import diffusers_adapter as dx
from bridge_server.engine.tiny import build_tiny_pipeline

ENGINE = Path(dx.__file__).resolve().parent


def test_the_installed_diffusers_is_a_checked_version():
    installed = dx.diffusers_version()
    assert installed in dx.CHECKED_VERSIONS, (
        f"diffusers {installed} is installed, but the adapter was checked only on {dx.CHECKED_VERSIONS}. "
        "Run tests/unit/test_diffusers_adapter.py and tests/integration/test_engine_*.py on it, fix "
        "bridge_server/engine/diffusers_adapter.py where they fail, then add the version to CHECKED_VERSIONS."
    )
    assert dx.check_version(installed) is None


def test_an_unknown_version_is_refused_when_strict_and_named_otherwise():
    with pytest.raises(dx.UnknownDiffusersVersion, match="0.99.0"):
        dx.check_version("0.99.0", strict=True)
    assert "0.99.0" in (dx.check_version("0.99.0") or "")


def test_no_engine_module_but_the_adapter_touches_private_diffusers_members():
    """`x._name` on pipeline/model objects or `from diffusers... import _name` anywhere else in the engine fails."""
    own = {"self", "cls", "tr", "transformer", "torch", "m"}  # own attributes (_ace_*), torch's private API
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        if path.name == "diffusers_adapter.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusers"):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                name = base.id if isinstance(base, ast.Name) else None
                if name in ("pipe", "pipeline") or (name not in own and node.attr in _DIFFUSERS_PRIVATE):
                    offenders.append(f"{path.name}:{node.lineno}: {name}.{node.attr}")
    assert offenders == []


_DIFFUSERS_PRIVATE = {
    "_execution_device",
    "_pack_latents",
    "_unpack_latents",
    "_prepare_latent_image_ids",
    "_repeated_blocks",
    "_interrupt",
    "_check_attention_backend_requirements",
    "_compiled_call_impl",
}


def test_each_wrapper_on_the_tiny_pipeline():
    pipe = build_tiny_pipeline()
    assert str(dx.execution_device(pipe)) == "cpu"
    height, width = 48, 80
    lh, lw = dx.latent_size(height, width)
    assert (lh, lw) == (6, 10)
    noise = dx.randn((1, 16, lh, lw), torch.Generator().manual_seed(1), "cpu", torch.float32)
    packed = dx.pack_latents(pipe, noise)
    assert packed.shape == (1, (lh // 2) * (lw // 2), 64)
    assert torch.equal(dx.unpack_latents(pipe, packed, height, width), noise)
    ids = dx.latent_image_ids(pipe, lh // 2, lw // 2, "cpu", torch.float32)
    assert ids.shape == ((lh // 2) * (lw // 2), 3)
    mask = torch.ones(1, 1, height, width)
    image = torch.zeros(1, 3, height, width)
    mask_packed, image_packed = dx.mask_latents(
        pipe, mask, image, height, width, torch.float32, "cpu", torch.Generator().manual_seed(0)
    )
    assert mask_packed.shape[-1] == 256 and image_packed.shape[-1] == 64
    timesteps, total = dx.flux_timesteps(pipe.scheduler, 4, (lh // 2) * (lw // 2), "cpu")
    assert total == 4 and float(timesteps[0]) == 1000.0
    pipe.scheduler.step(torch.zeros_like(packed), timesteps[0], packed, return_dict=False)
    assert float(dx.step_sigma(pipe.scheduler)) == 1.0
    assert dx.repeated_blocks(pipe.transformer)  # regional compilation targets exist
    assert dx.attention_backend_problem("native") is None
    assert "unknown" in (dx.attention_backend_problem("no-such-backend") or "")
    dx.reset_compiled(pipe.transformer)
    assert not dx.is_gguf_model(pipe.transformer)
