"""reshaped_config on Gemma 4's per_layer_config as transformers 5 writes it: keys zero-padded
to the widest layer index ("05" among 10 or more layers), read back with int()."""

from __future__ import annotations

import json

import pytest

from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.geometry import config_geometry, geometry_by_layer
from surgeon.prune.reshape import LayerHeads, reshaped_config
from tests.helpers import BASE


def test_a_zero_padded_per_layer_key_is_the_entry_rewritten(tmp_path):
    """Every layer loses KV group 0 (query heads 0-3): the full layers (5, 7) keep 1 of 2 KV
    heads, which their per_layer_config entry must say, under its own key, head_dim kept."""
    ckpt = open_checkpoint(BASE)
    config = json.loads((BASE / "config.json").read_text())
    config["per_layer_config"] = {f"{int(k):02d}": v for k, v in config["per_layer_config"].items()}
    geometry = geometry_by_layer(ckpt.config, ckpt.tensors)
    layers = [LayerHeads(layer, geo, {}, [0, 1, 2, 3]) for (_, layer), geo in sorted(geometry.items())]
    new = reshaped_config(config, layers, 4, "base")
    assert new["per_layer_config"] == {
        "05": {"head_dim": 16, "num_key_value_heads": 1},
        "07": {"head_dim": 16, "num_key_value_heads": 1},
    }
    assert [config_geometry(new, layer)[:3] for layer in (0, 5)] == [(4, 8, 2), (4, 16, 1)]
    transformers = pytest.importorskip("transformers")
    built = transformers.Gemma4TextConfig.from_dict(new)
    assert built.per_layer_config[5].num_key_value_heads == 1 and built.per_layer_config[5].head_dim == 16
