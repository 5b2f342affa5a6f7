"""A real-width (3072) FLUX transformer with one block of each kind takes an ACE++ LoRA with real shapes."""

from __future__ import annotations

import time

import pytest
import torch
from diffusers import FluxTransformer2DModel

from bridge_server.engine.convert import check_lora_shapes, kohya_to_diffusers
from bridge_server.engine.tiny import ace_lora_state_dict


@pytest.mark.slow
def test_real_width_lora_with_linear1():
    start = time.monotonic()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build directly in bf16: 0.55 B params, ~1 GiB
    try:
        torch.manual_seed(0)
        model = FluxTransformer2DModel(
            in_channels=384, out_channels=64, num_layers=1, num_single_layers=1, guidance_embeds=True
        ).eval()
    finally:
        torch.set_default_dtype(previous)
    lora = ace_lora_state_dict(3072, 16, generator=torch.Generator().manual_seed(1), scale=0.02)
    assert lora["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (21504, 16)
    converted = kohya_to_diffusers(dict(lora), num_double=1, num_single=1, dtype=torch.bfloat16)
    check_lora_shapes(converted, model, name="subject")
    before = model.single_transformer_blocks[0].proj_mlp.weight.detach().clone()
    model.load_lora_adapter(converted, prefix="transformer", adapter_name="subject")
    layer = model.single_transformer_blocks[0].proj_mlp
    assert layer.lora_B["subject"].weight.shape == (12288, 16)
    delta = layer.lora_B["subject"].weight.float() @ layer.lora_A["subject"].weight.float()
    up = lora["lora_unet_single_blocks_0_linear1.lora_up.weight"].float()[3 * 3072 :]
    down = lora["lora_unet_single_blocks_0_linear1.lora_down.weight"].float()
    assert torch.allclose(delta, up @ down, atol=1e-3)
    assert torch.equal(layer.base_layer.weight, before)  # not fused: the base weights stay untouched
    assert time.monotonic() - start < 60
