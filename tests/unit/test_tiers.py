"""The memory-tier choice (bridge_server/engine/tiers.py): a pure function from the machine and the files there are
to the fastest tier that fits, with the reason; and its errors when nothing fits or a request cannot work."""

from __future__ import annotations

import pytest

from bridge_server.engine.tiers import TIER_NAMES, Available, Machine, TierError, choose_tier, needs, tier

BF16 = Available(bf16=True)
ALL_GGUF = Available(bf16=True, gguf=frozenset({"Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K"}))


def cuda(free: float, ram: float = 64.0, fp8: bool = True) -> Machine:
    return Machine("cuda", free, ram, fp8_ok=fp8)


@pytest.mark.parametrize(
    ("free_vram", "ram", "files", "expected", "weights"),
    [
        (80, 128, BF16, "full", "bf16"),  # H100: everything on the card
        (40, 64, BF16, "full", "bf16"),
        (32, 64, BF16, "bf16", "bf16"),  # 32 GB card: text encoders to the CPU
        (23, 64, BF16, "fp8", "fp8"),  # 24 GB card: fp8 weight-only from the bf16 weights
        (23, 64, ALL_GGUF, "fp8", "fp8"),
        (15.5, 64, ALL_GGUF, "fp8", "fp8"),  # 16 GB card
        (14, 64, ALL_GGUF, "gguf-q6", "Q6_K"),
        (11.5, 64, ALL_GGUF, "gguf-q5", "Q5_K"),  # 12 GB card
        (10, 64, ALL_GGUF, "gguf-q4", "Q4_K"),
        (7.5, 64, ALL_GGUF, "gguf-q3", "Q3_K"),  # 8 GB card with a Q3_K file
        (7.5, 32, Available(bf16=True, gguf=frozenset({"Q4_0"})), "group-offload", "Q4_0"),  # 8 GB, Q4 streamed
        (7.5, 48, BF16, "sequential-offload", "bf16"),  # 8 GB, 48 GB RAM, bf16 only: 2 x 23.8 too much to stream
        (7.5, 96, BF16, "group-offload", "bf16"),  # ... with 96 GB RAM it streams the bf16 blocks
        (5.5, 32, Available(bf16=True, gguf=frozenset({"Q4_K", "Q3_K"})), "group-offload", "Q3_K"),  # 6 GB card
    ],
)
def test_the_fastest_tier_that_fits(free_vram, ram, files, expected, weights):
    choice = choose_tier(cuda(free_vram, ram), files)
    assert (choice.tier.name, choice.weights) == (expected, weights)
    vram_need, ram_need = needs(choice.tier, choice.weights)
    assert vram_need <= free_vram and ram_need <= ram
    assert "fits" in choice.reason and f"{free_vram:.1f} GB free VRAM" in choice.reason
    faster = TIER_NAMES[: TIER_NAMES.index(expected)]
    assert [name for name, _ in choice.rejected] == list(faster)  # and each says why not


def test_no_fp8_storage_skips_the_fp8_tier():
    choice = choose_tier(cuda(23, fp8=False), ALL_GGUF)
    assert choice.tier.name == "gguf-q8"
    assert ("fp8", "this torch/GPU has no float8 storage") in choice.rejected


def test_a_missing_gguf_file_is_named_and_quantize_suggested():
    choice = choose_tier(cuda(11.5, 64), BF16)
    assert choice.tier.name == "sequential-offload"
    assert ("gguf-q5", "no Q5_K/Q5_1/Q5_0 GGUF file") in choice.rejected
    assert choice.hint and "ace-bridge models quantize --type q5_0" in choice.hint  # Q5_1 would not fit 11.5


def test_state_carries_tier_and_reason():
    state = choose_tier(cuda(7.5), ALL_GGUF).as_state()
    assert state["tier"] == "gguf-q3" and state["weights"] == "Q3_K" and "fits" in str(state["tier_reason"])


def test_no_gpu_for_a_full_size_model_is_a_typed_error():
    with pytest.raises(TierError) as err:
        choose_tier(Machine("cpu", None, 64.0), BF16)
    assert err.value.kind == "no_gpu" and "--demo" in err.value.message


def test_the_tiny_model_runs_on_the_cpu():
    choice = choose_tier(Machine("cpu", None, 4.0), Available(bf16=True, tiny=True))
    assert choice.tier.name == "cpu"


def test_nothing_fits():
    with pytest.raises(TierError) as err:
        choose_tier(cuda(1.0, 12.0), ALL_GGUF)
    assert err.value.kind == "too_little_memory" and "group-offload" in err.value.message


def test_apple_mps_skips_cuda_only_tiers():
    choice = choose_tier(Machine("mps", 40.0, 40.0), ALL_GGUF)
    assert choice.tier.name == "gguf-q8"  # unified memory: VRAM and host needs share the 40 GB
    assert ("fp8", "not on Apple MPS (CUDA only)") in choice.rejected
    assert dict(choice.rejected)["bf16"].startswith("needs 44.4 GB of unified memory")


def test_a_requested_tier_overrides_the_choice():
    choice = choose_tier(cuda(80), ALL_GGUF, requested="gguf-q4")
    assert (choice.tier.name, choice.weights, choice.reason) == ("gguf-q4", "Q4_K", "requested")


def test_a_requested_tier_without_its_file_or_ram_is_refused():
    with pytest.raises(TierError) as err:
        choose_tier(cuda(80), BF16, requested="gguf-q8")
    assert err.value.kind == "model_missing" and "models quantize" in err.value.message
    with pytest.raises(TierError) as err:
        choose_tier(cuda(80, ram=16.0), BF16, requested="group-offload")
    assert err.value.kind == "too_little_ram" and "host RAM" in err.value.message
    with pytest.raises(ValueError):
        tier("no-such-tier")


def test_the_table_is_ordered_fastest_first_and_shrinks_vram():
    vrams = [
        needs(
            tier(n), "bf16" if tier(n).weights in ("bf16", "best") else {"fp8": "fp8", "gguf": "Q8_0"}[tier(n).weights]
        )[0]
        for n in TIER_NAMES
        if n != "cpu"
    ]
    assert vrams[0] > vrams[1] > vrams[2]  # full > bf16 > fp8
    assert vrams[-2] < 8 and vrams[-1] < 4  # the offload tiers fit 8 GB and less


def test_serve_tier_flag_reaches_the_engine_state(tmp_path):
    from bridge_server.cli.main import build_parser
    from bridge_server.cli.serve import engine_factory_for

    args = build_parser().parse_args(["serve", "--model", str(tmp_path), "--tier", "gguf-q4"])
    factory, _root = engine_factory_for(args, tmp_path)
    state = factory().state()
    assert state["tier_requested"] == "gguf-q4" and state["state"] == "missing"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tier", "q2"])


def test_status_prints_the_tier_its_reason_and_a_typed_error():
    from bridge_server.cli.admin import engine_lines

    state = choose_tier(cuda(7.5), ALL_GGUF).as_state() | {"error": "no CUDA GPU found", "error_kind": "no_gpu"}
    lines = engine_lines(state)
    assert lines[0].startswith("tier: gguf-q3 (Q3_K) - fastest tier that fits")
    assert lines[-1] == "error [no_gpu]: no CUDA GPU found"
    assert engine_lines({"tier_requested": "auto"}) == ["tier: auto (chosen when the model loads)"]
