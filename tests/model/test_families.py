"""The family registry (surgeon.model.families.FAMILIES): one entry per family, each with a
tiny real model in the tests, and its quirks enforced where a checkpoint lacks a tensor the
family always has (transformers would fill it with random values)."""

import json
import re
import shutil

import pytest
from safetensors.torch import load_file, save_file

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import FAMILIES, FAMILY_OF_TYPE, model_layout, supported_types
from tests.tiny_models import FAMILIES as TINY_FAMILIES
from tests.tiny_models import save_tiny


def test_every_registered_family_has_a_tiny_model_and_wrappers_map_to_their_text_model():
    assert set(FAMILIES) == {*TINY_FAMILIES, "gemma4_text"}  # gemma4: the committed fixtures
    assert FAMILY_OF_TYPE["gemma4"] is FAMILIES["gemma4_text"] and FAMILY_OF_TYPE["gemma3"] is FAMILIES["gemma3_text"]
    assert supported_types() == "gemma3, gemma4, llama, mistral, qwen2, qwen3"


@pytest.mark.parametrize(
    ("family", "missing"),
    [
        ("llama", "model.layers.1.self_attn.v_proj.weight"),  # only Gemma 4's keys double as values
        ("qwen2", "model.layers.0.self_attn.q_proj.bias"),
        ("qwen3", "model.layers.1.self_attn.q_norm.weight"),
    ],
)
def test_a_tensor_the_family_always_has_is_required(tmp_path, family, missing):
    src = save_tiny(family, tmp_path / "src")
    assert len(model_layout(open_checkpoint(src)).layers) >= 2
    broken = shutil.copytree(src, tmp_path / "broken")
    tensors = load_file(broken / "model.safetensors")
    del tensors[missing]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SurgeonError, match=f"has no {missing}"):
        model_layout(open_checkpoint(broken))


def test_an_unknown_model_type_names_the_supported_ones(tmp_path):
    src = save_tiny("llama", tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(SurgeonError, match=re.escape("not supported for pruning (supported: gemma3, gemma4, llama")):
        model_layout(open_checkpoint(src))
