"""Which query-head counts a reshape reaches (issue 21), on real geometries.

The expected counts are worked by hand from Q' = kv' x g' (kv' <= n_kv, g' <= n_q / n_kv),
intersected over layer types, not recomputed by the code under test. The plan is torch-free;
one test builds every planned shape of the Gemma 4 fixture in stock transformers (meta device).
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config
from transformers.models.gemma4.configuration_gemma4 import Gemma4TextConfig

from surgeon.errors import SurgeonError
from surgeon.prune.reshape_plan import TypeGeometry, fractions_text, reachable, solve, type_geometries
from tests.gguf_fixtures import FAMILIES
from tests.helpers import BASE

SLIDING, FULL = "sliding_attention", "full_attention"

# google/gemma-4-31B(-it) text_config as published on the Hub: the same numbers in
# tests/model/test_layers_arch.py and in several public parsers' fixtures (60 layers, 5 sliding
# then 1 full, 32 query heads; sliding 16 KV heads of 256, full 4 KV heads of 512, K = V).
GEMMA4_31B = {
    "model_type": "gemma4",
    "text_config": {
        "model_type": "gemma4_text",
        "hidden_size": 5376,
        "num_hidden_layers": 60,
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "num_global_key_value_heads": 4,
        "head_dim": 256,
        "global_head_dim": 512,
        "attention_k_eq_v": True,
        "layer_types": ([SLIDING] * 5 + [FULL]) * 10,
    },
}
# google/gemma-4-E2B(-it): 35 layers, 4 sliding then 1 full, 8 query heads and 1 KV head in
# both (num_global_key_value_heads null, attention_k_eq_v false), head_dim 256 / 512.
GEMMA4_E2B = {
    "model_type": "gemma4",
    "text_config": {
        "model_type": "gemma4_text",
        "hidden_size": 1536,
        "num_hidden_layers": 35,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "num_global_key_value_heads": None,
        "head_dim": 256,
        "global_head_dim": 512,
        "attention_k_eq_v": False,
        "num_kv_shared_layers": 20,
        "layer_types": ([SLIDING] * 4 + [FULL]) * 7,
    },
}


def _gemma4_31b_per_layer() -> dict:
    """The same model as transformers 5 writes it: per_layer_config instead of global_* keys."""
    text = {k: v for k, v in GEMMA4_31B["text_config"].items() if k != "model_type"}
    return Gemma4TextConfig(**text).to_dict()


GEOMETRIES = {
    # name: (config, [(layer type, layer count, q heads, kv heads, head_dim)], query heads reachable)
    "llama-3-8b": (
        LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8).to_dict(),
        [(None, 32, 32, 8, 128)],
        [*range(1, 11), 12, 14, 15, 16, 18, 20, 21, 24, 28],
    ),
    "qwen3-8b": (
        Qwen3Config(
            hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128
        ).to_dict(),
        [(FULL, 36, 32, 8, 128)],
        [*range(1, 11), 12, 14, 15, 16, 18, 20, 21, 24, 28],
    ),
    "qwen3-0.6b": (
        Qwen3Config(
            hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128
        ).to_dict(),
        [(FULL, 28, 16, 8, 128)],
        [*range(1, 9), 10, 12, 14],
    ),
    "gemma-3-27b": (
        Gemma3TextConfig(
            hidden_size=5376, num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16, head_dim=128
        ).to_dict(),
        [(SLIDING, 52, 32, 16, 128), (FULL, 10, 32, 16, 128)],
        [*range(1, 17), 18, 20, 22, 24, 26, 28, 30],
    ),
    "gemma-4-31b": (
        GEMMA4_31B,
        [(SLIDING, 50, 32, 16, 256), (FULL, 10, 32, 4, 512)],
        [*range(1, 11), 12, 14, 15, 16, 18, 20, 24, 28],
    ),
    "gemma-4-31b-per-layer": (
        _gemma4_31b_per_layer(),
        [(SLIDING, 50, 32, 16, 256), (FULL, 10, 32, 4, 512)],
        [*range(1, 11), 12, 14, 15, 16, 18, 20, 24, 28],
    ),
    "gemma-4-e2b": (GEMMA4_E2B, [(SLIDING, 28, 8, 1, 256), (FULL, 7, 8, 1, 512)], [*range(1, 8)]),
    "smollm2-135m": (
        LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3).to_dict(),
        [(None, 30, 9, 3, 64)],
        [1, 2, 3, 4, 6],
    ),
    "tiny-gqa-llama": (LlamaConfig(**FAMILIES["llama"][2]).to_dict(), [(None, 2, 8, 4, 8)], [1, 2, 3, 4, 6]),
    "gemma4-tiny-fixture": (
        json.loads((BASE / "config.json").read_text()),
        [(SLIDING, 6, 8, 4, 8), (FULL, 2, 8, 2, 16)],
        [1, 2, 3, 4, 6],
    ),
    # Multi-head attention (Llama 2 7B's shape): each KV group is one head, so any count.
    "mha-llama-2-7b": (LlamaConfig().to_dict(), [(None, 32, 32, 32, 128)], [*range(1, 32)]),
}


def _geoms(name: str) -> list[TypeGeometry]:
    return type_geometries(GEOMETRIES[name][0])


@pytest.mark.parametrize("name", GEOMETRIES)
def test_layer_types_and_their_geometry(name):
    config, types, _ = GEOMETRIES[name]
    geoms = type_geometries(config)
    assert [(g.layer_type, len(g.layers), g.num_heads, g.num_kv_heads, g.head_dim) for g in geoms] == types
    assert sorted(layer for g in geoms for layer in g.layers) == list(range(sum(t[1] for t in types)))


@pytest.mark.parametrize("name", GEOMETRIES)
def test_reachable_query_head_counts(name):
    _, types, heads = GEOMETRIES[name]
    shapes = reachable(_geoms(name))
    assert [s.heads for s in shapes] == sorted(heads, reverse=True)  # fewest removed first
    assert [s.fraction for s in shapes] == [Fraction(types[0][2] - h, types[0][2]) for h in sorted(heads, reverse=True)]
    for shape in shapes:
        for t in shape.types:
            # Each layer type keeps `heads` as whole groups of its own KV heads.
            assert t.kv_heads * t.group == shape.heads
            assert t.kv_heads <= t.geometry.num_kv_heads and t.group <= t.geometry.group_size


def test_smollm2_refuses_12_5_percent_and_names_one_third():
    with pytest.raises(SurgeonError) as err:
        solve(_geoms("smollm2-135m"), 0.125)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        "a reshape removing 12.5% of 9 query heads is not reachable: every layer keeps the same number of "
        "query heads and every KV group the same share of them; nearest: 0.333 (6 heads kept); "
        "reachable: 0.333 (6 heads kept), 0.556 (4), 0.667 (3), 0.778 (2), 0.889 (1); "
        "ask for 0.333, or use mask mode for 12.5%"
    )


@pytest.mark.parametrize("target", [Fraction(1, 3), 1 - 6 / 9, 0.333])
def test_smollm2_one_third_keeps_every_kv_head(target):
    # 1 - 6/9 is 0.33333333333333337 (within the tolerance); 0.333 is the value a refusal offers.
    shape = solve(_geoms("smollm2-135m"), target)
    (kept,) = shape.types
    assert (shape.heads, kept.kv_heads, kept.group, kept.alternatives) == (6, 3, 2, ((2, 3),))
    assert not shape.drops_groups


def test_a_target_between_two_reachable_fractions_names_both():
    with pytest.raises(
        SurgeonError, match=r"nearest: 0\.333 \(6 heads kept\) or 0\.556 \(4 heads kept; drops KV groups\);"
    ):
        solve(_geoms("smollm2-135m"), 0.4)
    with pytest.raises(SurgeonError, match=r"ask for 0\.556"):
        solve(_geoms("smollm2-135m"), 0.5)


def test_gemma4_31b_reaches_12_5_percent_only_by_dropping_sliding_kv_groups():
    shape = solve(_geoms("gemma-4-31b"), 0.125)
    sliding, full = shape.types
    assert shape.heads == 28
    assert (sliding.kv_heads, sliding.group, sliding.alternatives) == (14, 2, ())  # 2 of 16 KV groups go
    assert (full.kv_heads, full.group, full.alternatives) == (4, 7, ())  # one query head per group
    assert [t.geometry.layer_type for t in shape.group_drops()] == [SLIDING]
    assert shape.text() == (
        "keeps 28 of 32 query heads (12.5% removed): sliding_attention layers keep 14 of 16 KV heads, "
        "2 of 2 query heads each; full_attention layers keep 4 of 4 KV heads, 7 of 8 query heads each"
    )


def test_gemma4_31b_keeps_every_kv_head_only_at_one_half():
    # Sliding layers have 2 query heads per KV head: any other count loses whole groups there.
    shapes = reachable(_geoms("gemma-4-31b"))
    assert [s.fraction for s in shapes if not s.drops_groups] == [Fraction(1, 2)]


def test_gemma4_31b_refusal_says_where_kv_groups_go():
    with pytest.raises(SurgeonError) as err:
        solve(_geoms("gemma-4-31b"), 0.2)
    assert (
        "nearest: 0.125 (28 heads kept; drops KV groups in sliding_attention) or "
        "0.25 (24 heads kept; drops KV groups in sliding_attention);"
    ) in str(err.value)
    assert str(err.value).endswith("ask for 0.25, or use mask mode for 20%")


@pytest.mark.parametrize(
    ("name", "target", "kv_heads", "group", "drops"),
    [
        ("llama-3-8b", 0.125, 7, 4, True),  # 28 of 32 only as 7 whole groups of 4
        ("llama-3-8b", 0.25, 8, 3, False),  # 24: one query head of each group
        ("qwen3-8b", 0.5, 8, 2, False),
        ("gemma-3-27b", 0.125, 14, 2, True),
        ("gemma-4-e2b", 0.125, 1, 7, False),  # one KV head: any count of its 8 query heads
        ("tiny-gqa-llama", 0.25, 3, 2, True),  # 6 of 8 is not 4 groups of 1.5
        ("tiny-gqa-llama", 0.5, 4, 1, False),
        ("mha-llama-2-7b", 0.125, 28, 1, True),
    ],
)
def test_solved_shapes(name, target, kv_heads, group, drops):
    shape = solve(_geoms(name), target)
    assert all((t.kv_heads, t.group) == (kv_heads, group) for t in shape.types)
    assert shape.drops_groups is drops


def test_multi_head_attention_drops_heads_without_a_group_warning():
    shapes = reachable(_geoms("mha-llama-2-7b"))
    assert all(s.drops_groups and not s.group_drops() for s in shapes)  # a group is one head
    assert "drops" not in fractions_text(_geoms("mha-llama-2-7b"))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "smollm2-135m",
            "0.333 (6 heads kept), 0.556 (4; drops KV groups), 0.667 (3), 0.778 (2; drops KV groups), "
            "0.889 (1; drops KV groups)",
        ),
        ("gemma-4-e2b", "0.125 (7 heads kept), 0.25 (6), 0.375 (5), 0.5 (4), 0.625 (3), 0.75 (2), 0.875 (1)"),
        (
            "gemma4-tiny-fixture",
            (
                "0.25 (6 heads kept; drops KV groups in sliding_attention), 0.5 (4), 0.625 (3; drops KV groups), "
                "0.75 (2; drops KV groups in sliding_attention), 0.875 (1; drops KV groups)"
            ),
        ),
    ],
)
def test_fractions_text(name, text):
    assert fractions_text(_geoms(name)) == text


def test_no_reachable_reshape():
    one_head = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1).to_dict()
    assert fractions_text(type_geometries(one_head)) == "none"
    with pytest.raises(SurgeonError, match=r"no reshape of this model removes a head \(mask mode can remove 50%\)$"):
        solve(type_geometries(one_head), 0.5)


@pytest.mark.parametrize("target", [0, 1, 1.5, -0.1, float("nan"), "0.5", None])
def test_a_target_outside_0_1_is_refused(target):
    with pytest.raises(SurgeonError, match=r"above 0 and below 1 \(got "):
        solve(_geoms("tiny-gqa-llama"), target)


def test_layer_types_of_different_query_head_counts_are_refused():
    geoms = [TypeGeometry(SLIDING, (0,), 8, 4, 8), TypeGeometry(FULL, (1,), 4, 2, 8)]
    with pytest.raises(SurgeonError, match=r"^a reshape needs one query-head count for every layer \(found 4, 8\)$"):
        reachable(geoms)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": 64, "num_hidden_layers": 2}, "config.json: num_attention_heads is missing; "),
        ({"hidden_size": 64, "num_attention_heads": 8}, "config.json: num_hidden_layers is missing; "),
        (
            {"text_config": {"num_attention_heads": 8, "hidden_size": 64}},
            "config.json: text_config.num_hidden_layers is missing; ",
        ),
        (
            {"num_attention_heads": 8, "num_hidden_layers": 2},
            "config.json: head_dim and hidden_size are missing; layer 0",
        ),
        (
            {"num_attention_heads": "8", "num_hidden_layers": 2, "hidden_size": 64},
            "config.json: num_attention_heads must be a positive integer (got '8')",
        ),
        (
            {"num_attention_heads": 8, "num_key_value_heads": 3, "num_hidden_layers": 2, "hidden_size": 64},
            "config.json: layer 0 has 8 query heads and 3 KV heads; ",
        ),
        (
            {"num_attention_heads": 8, "num_key_value_heads": 16, "num_hidden_layers": 2, "hidden_size": 64},
            "config.json: layer 0 has 8 query heads and 16 KV heads; ",
        ),
        ([], "config.json: not a JSON object"),
    ],
)
def test_bad_configs_are_one_line(config, message):
    with pytest.raises(SurgeonError) as err:
        type_geometries(config)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_every_planned_shape_of_the_gemma4_fixture_builds_in_transformers():
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((BASE / "config.json").read_text())
    for shape in reachable(type_geometries(config)):
        sliding, full = shape.types
        new = dict(config, num_attention_heads=shape.heads, num_key_value_heads=sliding.kv_heads)
        new["per_layer_config"] = {
            layer: dict(values, num_key_value_heads=full.kv_heads)
            for layer, values in config["per_layer_config"].items()
        }
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**new))
        for kept in shape.types:
            for layer in kept.geometry.layers:
                attn = model.model.layers[layer].self_attn
                assert attn.q_proj.weight.shape[0] == shape.heads * kept.geometry.head_dim
                assert attn.k_proj.weight.shape[0] == kept.kv_heads * kept.geometry.head_dim
