"""reshape slices q/k/v/o (and their biases) and keeps q_norm/k_norm as they are: right where
those norms are one head's width, shared by every head (Qwen3, Gemma). A model whose
attention holds another tensor sized by the heads (OLMo 2's q_norm/k_norm span all heads,
and normalize over them) cannot be sliced so: refused in one line, nothing written, not a
checkpoint transformers then fails to load (or, were the norms sliced, another model)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from surgeon.cli.main import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def test_a_norm_over_all_heads_is_refused(tmp_path):
    config = transformers.Olmo2Config(
        vocab_size=128,
        hidden_size=96,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    masked = shutil.copytree(tmp_path / "base", tmp_path / "masked")
    tensors = safetensors_numpy.load_file(masked / "model.safetensors")
    for layer in range(2):
        for head in (1, 3, 5, 7):  # one of each KV group's two: a balanced removal
            rows = slice(head * 12, (head + 1) * 12)
            tensors[f"model.layers.{layer}.self_attn.q_proj.weight"][rows] = 0
            tensors[f"model.layers.{layer}.self_attn.o_proj.weight"][:, rows] = 0
    safetensors_numpy.save_file(tensors, masked / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["reshape", str(masked), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("surgeon: error: ") and result.output.count("\n") == 1
    assert "_norm.weight (shape [" in result.output and not out.exists()
