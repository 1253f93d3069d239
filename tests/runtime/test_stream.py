import pytest
import torch
from transformers import AutoModelForCausalLM

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.model.families import model_layout
from surgeon.runtime.stream import Batch, LayerStream
from tests.helpers import BASE
from tests.tiny_models import FAMILIES, as_multimodal_gemma4, save_tiny

IDS = torch.tensor([[5, 17, 9, 33, 2, 8, 40, 41, 3], [5, 60, 61, 62, 63, 1, 0, 0, 0]])
MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])


def streamed_logits(path):
    ckpt = open_checkpoint(path)
    stream = LayerStream(ckpt, model_layout(ckpt), torch.device("cpu"), torch.float32)
    batch = Batch(IDS, MASK)
    stream.trace(batch)
    hidden = batch.hidden
    for index in range(len(stream.layout.layers)):
        hidden = stream.run_layer(stream.load_layer(index), index, batch, hidden)
    assert stream.forward_calls == len(stream.layout.layers)
    return stream.logits(hidden)


def full_logits(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_streamed_forward_matches_the_full_model(tmp_path, family):
    path = save_tiny(family, tmp_path / family)
    streamed, full = streamed_logits(path), full_logits(path)
    real = MASK.bool()
    torch.testing.assert_close(streamed[real], full[real], rtol=1e-5, atol=1e-5)


def test_gemma4_streamed_forward_matches(tmp_path):
    streamed, full = streamed_logits(BASE), full_logits(BASE)
    torch.testing.assert_close(streamed[MASK.bool()], full[MASK.bool()], rtol=1e-5, atol=1e-5)


def test_multimodal_gemma4_naming(tmp_path):
    renamed = as_multimodal_gemma4(BASE, tmp_path / "mm")
    layout = model_layout(open_checkpoint(renamed))
    assert layout.stack == "model.language_model.layers"
    assert layout.layers[5].head_dim == 16 and layout.layers[5].num_kv_heads == 2
    assert layout.layers[5].v_proj is None and layout.layers[0].v_proj is not None
    torch.testing.assert_close(streamed_logits(renamed), streamed_logits(BASE))


def test_adapter_geometry_per_family(tmp_path):
    qwen2 = model_layout(open_checkpoint(save_tiny("qwen2", tmp_path / "q2")))
    assert qwen2.layers[0].q_bias == "model.layers.0.self_attn.q_proj.bias"
    qwen3 = model_layout(open_checkpoint(save_tiny("qwen3", tmp_path / "q3")))
    assert (qwen3.layers[0].num_heads, qwen3.layers[0].head_dim, qwen3.layers[0].num_kv_heads) == (4, 16, 2)
    gemma3 = model_layout(open_checkpoint(save_tiny("gemma3_text", tmp_path / "g3")))
    assert [layer.layer_type for layer in gemma3.layers] == ["sliding_attention"] * 2 + ["full_attention"]


def test_unsupported_family_is_a_clear_error(tmp_path):
    import json
    import shutil

    ckpt = shutil.copytree(BASE, tmp_path / "x")
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(SurgeonError, match="'gpt2' is not supported for pruning"):
        model_layout(open_checkpoint(ckpt))
