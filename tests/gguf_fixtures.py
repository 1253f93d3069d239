"""GGUF fixtures: tiny Hugging Face checkpoints converted as llama.cpp's converter converts
them (conversion/llama.py, conversion/gemma.py and base.py at ggml-org/llama.cpp 2bbcf7f),
written with gguf-py's GGUFWriter.

The forward transforms are written here from the converter, independently of
surgeon/model/crossnames.py, which undoes them; transformers' GGUF loader, a third
implementation, checks both (tests/model/test_crossnames.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, GGUFWriter, get_tensor_name_map
from gguf.quants import quantize

Q = GGMLQuantizationType
# The types gguf-py can write (gguf.quants.quantize); the K-quants and IQ types it only reads.
WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "MXFP4")
MULTIMODAL_TEXT = "model.language_model."


def hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors checkpoint folder as float32 (BF16 included)."""
    from safetensors.torch import load_file

    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update({k: v.float().numpy() for k, v in load_file(shard).items()})
    return tensors


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's LlamaModel.permute, in numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _arch_enum(arch: str) -> MODEL_ARCH:
    return next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch)


def converted(
    hf: dict[str, np.ndarray], config: dict, arch: str, *, n_vocab: int | None = None
) -> dict[str, np.ndarray]:
    """GGUF name -> float32 values, as the converter's modify_tensors leaves them."""
    name_map = get_tensor_name_map(_arch_enum(arch), config["num_hidden_layers"])
    out: dict[str, np.ndarray] = {}
    for name, data in hf.items():
        if name.startswith(MULTIMODAL_TEXT):
            name = "model." + name[len(MULTIMODAL_TEXT) :]
        if arch == "gemma4" and name.endswith(("layer_scalar", "per_dim_scale")):
            name += ".weight"  # Gemma4Model.filter_tensors
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = permute(data, config["num_attention_heads"], config["num_attention_heads"])
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = permute(data, config["num_attention_heads"], config["num_key_value_heads"])
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        if n_vocab is not None and "embed_tokens.weight" in name:
            data = data[:n_vocab]
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        out[gguf_name] = np.ascontiguousarray(data, dtype=np.float32)
    return out


def stack_experts(tensors: dict[str, np.ndarray], layers: int, experts: int, pattern: str) -> dict[str, np.ndarray]:
    """Per-expert tensors `pattern.format(layer=, expert=, proj=)` stacked into
    blk.L.ffn_{gate,up,down}_exps.weight [experts, rows, cols], as the converters stack them."""
    out = {}
    for layer in range(layers):
        for proj, gguf in (("gate", "ffn_gate_exps"), ("up", "ffn_up_exps"), ("down", "ffn_down_exps")):
            parts = [tensors[pattern.format(layer=layer, expert=e, proj=proj)] for e in range(experts)]
            out[f"blk.{layer}.{gguf}.weight"] = np.stack(parts)
    return out


def encoded(data: np.ndarray, qtype: str) -> tuple[np.ndarray, Q | None]:
    """(array to write, raw type): 1-D tensors stay F32 and rows that are not whole blocks
    fall back to F16, as the converter does."""
    kind = Q[qtype]
    if data.ndim == 1 or kind == Q.F32:
        return data.astype(np.float32), None
    if kind == Q.F16:
        return data.astype(np.float16), None
    from gguf.constants import GGML_QUANT_SIZES

    if data.shape[-1] % GGML_QUANT_SIZES[kind][0]:
        return data.astype(np.float16), None
    return quantize(data, kind), kind


def write_gguf(
    path: Path,
    arch: str,
    tensors: dict[str, np.ndarray],
    qtype: str = "F32",
    *,
    metadata: dict | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """Write `tensors` (float32, row-major) in `qtype` with gguf-py's writer."""
    writer = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    for name, data in tensors.items():
        array, raw = encoded(data, qtype)
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def model_metadata(arch: str, config: dict, name: str = "tiny") -> dict:
    """The key/values the converters write that the loaders read."""
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    if arch == "gemma4":  # one count per layer (Gemma4Model.set_gguf_parameters)
        kv_heads = [_layer_value(config, i, "num_key_value_heads") for i in range(config["num_hidden_layers"])]
    return {
        "general.name": name,
        f"{arch}.block_count": config["num_hidden_layers"],
        f"{arch}.context_length": config["max_position_embeddings"],
        f"{arch}.embedding_length": config["hidden_size"],
        f"{arch}.feed_forward_length": config["intermediate_size"],
        f"{arch}.attention.head_count": config["num_attention_heads"],
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        f"{arch}.vocab_size": config["vocab_size"],
    }


def _layer_value(config: dict, layer: int, key: str) -> int:
    """A Gemma 4 per-layer value: transformers >= 5.15 writes per_layer_config overrides."""
    return config.get("per_layer_config", {}).get(str(layer), {}).get(key, config[key])


def convert_checkpoint(
    folder: Path,
    out: Path,
    arch: str,
    qtype: str = "F32",
    *,
    n_vocab: int | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """A tiny safetensors checkpoint folder converted to one GGUF (or a split set)."""
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    tensors = converted(hf_tensors(folder), config, arch, n_vocab=n_vocab)
    if arch == "gemma4":  # Gemma4Model.generate_extra_tensors
        full = config["layer_types"].index("full_attention")
        half = _layer_value(config, full, "head_dim") // 2
        tensors["rope_freqs.weight"] = np.array([1.0] * (half // 4) + [1e30] * (half - half // 4), np.float32)
    return write_gguf(
        out, arch, tensors, qtype, metadata=model_metadata(arch, config), split_max_tensors=split_max_tensors
    )


# Small real models, built from transformers configs: an 8-q/4-kv GQA Llama (so q and k are
# permuted with different head counts), Mistral (llama in GGUF), Qwen 2 and 3, Gemma 2 and 3.
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=64)
GQA = dict(num_attention_heads=8, num_key_value_heads=4)
# family -> (GGUF architecture, config class, config)
FAMILIES = {
    "llama": ("llama", "LlamaConfig", dict(TINY, **GQA, attention_bias=True)),
    "mistral": ("llama", "MistralConfig", dict(TINY, **GQA, sliding_window=16)),
    "qwen2": ("qwen2", "Qwen2Config", dict(TINY, **GQA)),
    "qwen3": ("qwen3", "Qwen3Config", dict(TINY, **GQA, head_dim=8)),
    "gemma2": ("gemma2", "Gemma2Config", dict(TINY, **GQA, head_dim=8, sliding_window=16)),
    "gemma3": ("gemma3", "Gemma3TextConfig", dict(TINY, **GQA, head_dim=8, sliding_window=16)),
}


def save_hf(family: str, out: Path, seed: int = 0) -> Path:
    """A tiny random model of `family` saved in float32, its biases and norm weights random
    too (transformers starts them at 0 or 1, where a missed shift or permutation could hide)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    _, config_class, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**kwargs))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out)
    return out
