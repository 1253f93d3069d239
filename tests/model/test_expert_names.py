"""Mixture-of-experts tensor names: one tensor per expert (Qwen-MoE, Mixtral) or every expert
of a layer fused into one tensor (Gemma 4 26B-A4B), and the Gemma 4 MoE fixture's names and
shapes checked against transformers' own model, so the naming the diff tests use is real."""

import pytest

from fixtures.build_moe_pair import GEMMA4_CONFIG, gemma4_shapes
from surgeon.model.names import expert_family, fused_experts, parse_name


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("mlp.experts.17.up_proj.weight", ("mlp.experts.", ".up_proj.weight", 17)),
        ("block_sparse_moe.experts.0.w1.weight", ("block_sparse_moe.experts.", ".w1.weight", 0)),
        ("experts.3.down_proj", ("experts.", ".down_proj", 3)),
        ("experts.gate_up_proj", None),  # fused: no expert number in the name
        ("mlp.experts.17", None),  # nothing after the number: not a parameter of one expert
        ("mlp.up_proj.weight", None),
        ("my_experts.3.w1.weight", None),  # "experts" must be the whole module name
    ],
)
def test_expert_family(family, expected):
    assert expert_family(family) == expected


@pytest.mark.parametrize(
    ("family", "shape", "expected"),
    [
        ("experts.gate_up_proj", (128, 1408, 2816), 128),  # Gemma 4 26B-A4B
        ("experts.down_proj", (128, 2816, 704), 128),
        ("mlp.experts.gate_up_proj_bias", (32, 5760), 32),  # GPT-OSS
        ("feed_forward.experts.down_proj", (16, 8192, 5120), 16),  # Llama 4
        ("experts.gate_up_proj", (128,), None),  # one axis: nothing to slice per expert
        ("experts.3", (4, 4), None),  # a number is an expert, not a fused parameter
        ("mlp.experts.3.up_proj.weight", (8, 4), None),  # one expert's own tensor
        ("router.proj.weight", (128, 2816), None),
        ("router.per_expert_scale", (128,), None),
    ],
)
def test_fused_experts(family, shape, expected):
    assert fused_experts(family, shape) == expected


def test_gemma4_moe_fixture_names_and_shapes_are_those_of_transformers():
    """fixtures/build_moe_pair.py writes GEMMA4_CONFIG's checkpoint without torch; here the
    same config builds transformers' Gemma4ForConditionalGeneration (on the meta device), and
    every state_dict key and shape must match (tied lm_head aside, as on disk)."""
    torch = pytest.importorskip("torch")
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration

    config = Gemma4Config(**{k: v for k, v in GEMMA4_CONFIG.items() if k not in ("model_type", "architectures")})
    with torch.device("meta"):
        model = Gemma4ForConditionalGeneration(config)
    real = {name: tuple(t.shape) for name, t in model.state_dict().items() if name != "lm_head.weight"}
    assert real == gemma4_shapes()
    fused = {parse_name(n).family for n, shape in real.items() if fused_experts(parse_name(n).family, shape)}
    assert fused == {"experts.gate_up_proj", "experts.down_proj"}
