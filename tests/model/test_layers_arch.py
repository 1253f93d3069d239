import json

import pytest

from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import DTYPES
from surgeon.format.safetensors import TensorInfo
from surgeon.model.geometry import config_geometry, geometry_by_layer, layer_geometry, text_config
from surgeon.model.names import layers_cell, parse_name
from surgeon.text import layer_ranges
from tests.helpers import BASE


@pytest.mark.parametrize(
    "name, stack, layer, family",
    [
        ("model.layers.3.self_attn.q_proj.weight", "model.layers", 3, "self_attn.q_proj.weight"),
        (
            "model.language_model.layers.12.mlp.down_proj.weight",
            "model.language_model.layers",
            12,
            "mlp.down_proj.weight",
        ),
        (
            "language_model.model.layers.0.input_layernorm.weight",
            "language_model.model.layers",
            0,
            "input_layernorm.weight",
        ),
        ("transformer.h.7.attn.c_attn.weight", "transformer.h", 7, "attn.c_attn.weight"),
        ("model.embed_tokens.weight", None, None, "model.embed_tokens.weight"),
        ("lm_head.weight", None, None, "lm_head.weight"),
    ],
)
def test_parse_name(name, stack, layer, family):
    parsed = parse_name(name)
    assert (parsed.stack, parsed.layer, parsed.family) == (stack, layer, family)


def test_layer_ranges_and_descriptions():
    assert layer_ranges([3, 0, 1, 2, 7, 9, 10]) == "0-3, 7, 9-10"
    assert layer_ranges([]) == ""
    assert layers_cell([0, 1, 2, 3]) == "0-3"
    assert layers_cell(range(4, 60), count_them=True) == "4-59 (all 56)"
    assert layers_cell([0, 1, 2, 3, 5], count_them=True) == "0-3, 5 (5 layers)"
    assert layers_cell([]) == "(none)"


def fake(shape):
    return TensorInfo("t", DTYPES["BF16"], shape, "f", 0, 0)


GEMMA4_31B = {
    # The shape of google/gemma-4-31B-it's text config (per the reference card).
    "model_type": "gemma4",
    "text_config": {
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": 4,
        "attention_k_eq_v": True,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    },
}


def test_gemma4_geometry_from_global_keys():
    cfg = text_config(GEMMA4_31B, "model.language_model.layers")
    assert config_geometry(cfg, 0) == (32, 256, 16, "sliding_attention")
    assert config_geometry(cfg, 5) == (32, 512, 4, "full_attention")


def test_gemma4_geometry_from_per_layer_config():
    config = json.loads((BASE / "config.json").read_text())
    assert config_geometry(config, 0) == (8, 8, 4, "sliding_attention")
    assert config_geometry(config, 5) == (8, 16, 2, "full_attention")
    geometry = geometry_by_layer(config, open_checkpoint(BASE).tensors)
    assert geometry[("model.layers", 7)].head_dim == 16
    assert geometry[("model.layers", 7)].num_kv_heads == 2
    assert geometry[("model.layers", 6)].head_dim == 8
    assert all(g.source == "config" for g in geometry.values())


def test_per_layer_config_keys_as_transformers_writes_them():
    # transformers 5 pads the keys to the widest index: layer 5 of 60 is "05".
    cfg = {
        "num_attention_heads": 32,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "per_layer_config": {"05": {"head_dim": 512, "num_key_value_heads": 4}, "59": {"head_dim": 512}},
    }
    assert config_geometry(cfg, 5) == (32, 512, 4, None)
    assert config_geometry(cfg, 59) == (32, 512, 16, None)
    assert config_geometry(cfg, 50) == (32, 256, 16, None)


def test_geometry_from_shapes_when_config_is_missing_or_wrong():
    tensors = {
        "self_attn.q_proj.weight": fake((4096, 5376)),
        "self_attn.k_proj.weight": fake((1024, 5376)),
        "self_attn.q_norm.weight": fake((512,)),
        "self_attn.o_proj.weight": fake((5376, 4096)),
    }
    geo = layer_geometry(None, "model.layers", 0, tensors)
    assert (geo.num_heads, geo.head_dim, geo.num_kv_heads, geo.source) == (8, 512, 2, "shapes")
    # A config whose head_dim disagrees with the weights loses to the weights.
    wrong = {"num_attention_heads": 8, "head_dim": 256}
    assert layer_geometry(wrong, "model.layers", 0, tensors).head_dim == 512
    # Without q_norm, the config's head count splits the rows.
    del tensors["self_attn.q_norm.weight"]
    geo = layer_geometry({"num_attention_heads": 32}, "model.layers", 0, tensors)
    assert (geo.num_heads, geo.head_dim, geo.num_kv_heads) == (32, 128, 8)
    assert layer_geometry(None, "model.layers", 0, tensors) is None


def test_llama_geometry_defaults():
    cfg = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
    assert config_geometry(cfg, 0) == (32, 128, 8, None)
