"""Width-agnostic converters: kohya ACE++ LoRA -> diffusers, BFL <-> diffusers transformer keys."""

from __future__ import annotations

import pytest
import torch
from ace_protocol.errors import ErrorCode
from diffusers import FluxTransformer2DModel
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
from safetensors.torch import save_file

from bridge_server.engine.base import EngineError
from bridge_server.engine.convert import (
    bfl_to_diffusers,
    check_lora_shapes,
    diffusers_to_bfl,
    kohya_to_diffusers,
    load_safetensors,
)
from bridge_server.engine.tiny import ace_lora_state_dict, tiny_transformer_config


def tiny_transformer(in_channels: int = 448) -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(**tiny_transformer_config(in_channels)).eval()


def test_bfl_round_trip_is_exact():
    state = tiny_transformer().state_dict()
    bfl = diffusers_to_bfl(state)
    assert bfl["img_in.weight"].shape == (32, 448)
    assert bfl["single_blocks.0.linear1.weight"].shape == (32 * 3 + 128, 32)
    assert bfl["double_blocks.0.img_attn.qkv.weight"].shape == (96, 32)
    back = bfl_to_diffusers(bfl)
    assert set(back) == set(state)
    for key, value in state.items():
        assert torch.equal(back[key], value), key
    assert bfl_to_diffusers({f"model.diffusion_model.{k}": v for k, v in bfl.items()}).keys() == state.keys()


def test_final_layer_modulation_is_swapped():
    state = tiny_transformer().state_dict()
    bfl = diffusers_to_bfl(state)
    scale, shift = state["norm_out.linear.weight"].chunk(2)
    assert torch.equal(bfl["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))


def test_bfl_unexpected_or_missing_keys_are_model_missing():
    bfl = diffusers_to_bfl(tiny_transformer().state_dict())
    with pytest.raises(EngineError) as err:
        bfl_to_diffusers({**bfl, "something.else": torch.zeros(1)})
    assert err.value.code == ErrorCode.MODEL_MISSING
    del bfl["txt_in.weight"]
    bfl.pop("final_layer.adaLN_modulation.1.bias")
    with pytest.raises(EngineError):
        bfl_to_diffusers(bfl)


def test_kohya_matches_diffusers_where_diffusers_works():
    """Without single-block linear1 (which diffusers can only split at width 3072) both give the same tensors."""
    sd = ace_lora_state_dict(32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    sd = {k: v for k, v in sd.items() if "linear1" not in k}
    ours = kohya_to_diffusers(dict(sd))
    theirs = _convert_kohya_flux_lora_to_diffusers(dict(sd))
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.allclose(ours[key], theirs[key]), key


def test_kohya_linear1_split_and_alpha_at_any_width():
    sd = ace_lora_state_dict(32, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    sd["lora_unet_single_blocks_0_linear1.alpha"] = torch.tensor(4.0)
    out = kohya_to_diffusers(sd)
    prefix = "transformer.single_transformer_blocks.0"
    up = sd["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    down = sd["lora_unet_single_blocks_0_linear1.lora_down.weight"]
    rows = [out[f"{prefix}.{p}.lora_B.weight"].shape[0] for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
    assert rows == [32, 32, 32, 128]
    delta = torch.cat([out[f"{prefix}.{p}.lora_B.weight"] for p in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
    delta = delta @ out[f"{prefix}.attn.to_q.lora_A.weight"]
    assert torch.allclose(delta, up @ down * (4.0 / 8))


def test_kohya_drops_blocks_the_model_lacks():
    sd = ace_lora_state_dict(32, 4, num_double=3, num_single=2)
    out = kohya_to_diffusers(sd, num_double=1, num_single=1)
    assert all(".0." in k for k in out)


@pytest.mark.parametrize(
    "sd",
    [
        {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 32)},  # no up
        {"lora_te_text_model.lora_down.weight": torch.zeros(4, 32)},  # unknown key
        {"transformer.x.lora_A.weight": torch.zeros(4, 32)},  # another format
        {},
    ],
)
def test_bad_lora_is_a_clear_error(sd):
    with pytest.raises(EngineError) as err:
        kohya_to_diffusers(sd, name="bad.safetensors")
    assert err.value.code == ErrorCode.MODEL_MISSING and "bad.safetensors" in err.value.message


def test_lora_for_another_width_is_refused_before_peft():
    out = kohya_to_diffusers(ace_lora_state_dict(64, 4))
    with pytest.raises(EngineError) as err:
        check_lora_shapes(out, tiny_transformer(384), name="wide.safetensors")
    assert "expects 32 features" in err.value.message


def test_only_safetensors_files_are_read(tmp_path):
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"\x80\x04not really")
    with pytest.raises(EngineError) as err:
        load_safetensors(pickled)
    assert "only .safetensors" in err.value.message
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(EngineError) as err:
        load_safetensors(broken)
    assert err.value.code == ErrorCode.MODEL_MISSING
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(2)}, str(good))
    assert torch.equal(load_safetensors(good)["a"], torch.ones(2))
