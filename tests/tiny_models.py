"""Tiny random models of each supported family, saved with transformers for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMMON = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, max_position_embeddings=64)


def _configs(**overrides):
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(COMMON, **overrides)
    return {
        "llama": LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2),
        "mistral": MistralConfig(**common, num_attention_heads=4, num_key_value_heads=2, sliding_window=4),
        "qwen2": Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2),
        "qwen3": Qwen3Config(**common, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
        "gemma3_text": Gemma3TextConfig(
            **COMMON,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
    }


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3_text"]


def save_tiny(family: str, out: Path, seed: int = 0, **overrides) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_configs(**overrides)[family])
    with torch.no_grad():  # biases start at zero; make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


def as_multimodal_gemma4(text_ckpt: Path, out: Path) -> Path:
    """The tiny Gemma 4 text checkpoint renamed the way multimodal Gemma 4 stores it."""
    from surgeon.format.checkpoint import open_checkpoint
    from surgeon.format.safetensors import TensorBytes, write_safetensors

    ckpt = open_checkpoint(text_ckpt)
    out.mkdir(parents=True)
    weight_map = {}
    for shard_name, shard in ckpt.shards.items():
        data = (text_ckpt / shard_name).read_bytes()
        tensors = [
            TensorBytes(n.replace("model.", "model.language_model.", 1), i.dtype.name, i.shape, data[i.start : i.end])
            for n, i in shard.tensors.items()
        ]
        write_safetensors(out / shard_name, tensors, shard.metadata)
        weight_map.update({t.name: shard_name for t in tensors})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    text = json.loads((text_ckpt / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({"model_type": "gemma4", "text_config": text}))
    return out
