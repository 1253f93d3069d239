"""Quantized checkpoints written with numpy, in the layouts ModelOpt, compressed-tensors and
Hugging Face's fine-grained FP8 export, from a plain safetensors checkpoint.

`write_quantized(src, out, scheme)` quantizes every 2-d `*proj.weight` of `src` (the Linear
weights) with surgeon.format.requantize, except the modules the scheme's ignore list names,
which stay as they are, and copies every other tensor byte for byte, shard by shard. It
returns the values the reference quantizer computed for each quantized weight, which a
decoder of the written files must reproduce exactly.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.dtypes import to_float64
from surgeon.format.requantize import quantize_fp8, quantize_nvfp4
from surgeon.format.safetensors import TensorBytes, write_safetensors

SCHEMES = ("modelopt-nvfp4", "ct-nvfp4", "modelopt-fp8", "ct-fp8-channel", "ct-fp8-block", "hf-fp8-block")
FP8_BLOCK = (32, 32)  # small enough that the tiny model's 64x64 weights have a 2x2 grid
IGNORED_LAYER = 2  # its MLP stays in its source dtype: the ignore lists name it
INPUT_AMAX = 4.0  # a made-up activation amax for the activation-side scales


def is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    return name.endswith("proj.weight") and len(shape) == 2


def ignored(module: str) -> bool:
    return re.search(rf"layers\.{IGNORED_LAYER}\.mlp\.", module + ".") is not None


def write_quantized(src: Path, out: Path, scheme: str, *, config_json: bool = True) -> dict[str, np.ndarray]:
    """Write `src` quantized with `scheme` (one of SCHEMES) to folder `out`; the expected
    float32 values of each quantized logical weight. `config_json=False` (ModelOpt only)
    declares the quantization in hf_quant_config.json alone."""
    ckpt = open_checkpoint(src)
    out.mkdir(parents=True)
    expected: dict[str, np.ndarray] = {}
    weight_map: dict[str, str] = {}
    for shard_name, shard in ckpt.shards.items():
        data = (src / shard_name).read_bytes()
        tensors: list[TensorBytes] = []
        for name, info in shard.tensors.items():
            raw = data[info.start : info.end]
            module = name.rpartition(".")[0]
            if not is_linear_weight(name, info.shape) or ignored(module):
                tensors.append(TensorBytes(name, info.dtype.name, info.shape, raw))
                continue
            values = to_float64(np.frombuffer(raw, dtype=info.dtype.raw), info.dtype).astype(np.float32)
            parts, dequantized = quantize_parts(scheme, module, values.reshape(info.shape))
            tensors.extend(parts)
            expected[name] = dequantized
        write_safetensors(out / shard_name, tensors, shard.metadata)
        weight_map.update({t.name: shard_name for t in tensors})
    if ckpt.index_name:
        (out / ckpt.index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    _write_config(src, out, scheme, config_json)
    return expected


def quantize_parts(scheme: str, module: str, w: np.ndarray) -> tuple[list[TensorBytes], np.ndarray]:
    """The stored tensors of one quantized Linear module, and its dequantized values."""
    if scheme.endswith("nvfp4"):
        return _nvfp4_parts(scheme, module, w)
    granularity: str | tuple[int, int] = {
        "modelopt-fp8": "tensor",
        "ct-fp8-channel": "channel",
    }.get(scheme, FP8_BLOCK)
    q = quantize_fp8(w, granularity)
    if scheme == "modelopt-fp8":
        scale = _f32(f"{module}.weight_scale", q.scale.reshape(()))
    elif scheme == "hf-fp8-block":
        scale = _f32(f"{module}.weight_scale_inv", q.scale)
    else:
        scale = _f32(f"{module}.weight_scale", q.scale)  # [rows, 1] per channel, the grid per block
    parts = [TensorBytes(f"{module}.weight", "F8_E4M3", w.shape, q.codes.tobytes()), scale]
    if scheme != "hf-fp8-block":  # static activation scale; DeepSeek's are dynamic
        shape = () if scheme == "modelopt-fp8" else (1,)
        parts.append(_f32(f"{module}.input_scale", np.full(shape, INPUT_AMAX / 448, dtype=np.float32)))
    return parts, q.dequantized


def _nvfp4_parts(scheme: str, module: str, w: np.ndarray) -> tuple[list[TensorBytes], np.ndarray]:
    convention = "modelopt" if scheme == "modelopt-nvfp4" else "compressed-tensors"
    q = quantize_nvfp4(w, convention)
    scale = TensorBytes(f"{module}.weight_scale", "F8_E4M3", q.scale.shape, q.scale.tobytes())
    if convention == "modelopt":
        packed = TensorBytes(f"{module}.weight", "U8", q.packed.shape, q.packed.tobytes())
        second = _f32(f"{module}.weight_scale_2", np.array(q.second, dtype=np.float32))
        act = _f32(f"{module}.input_scale", np.array(INPUT_AMAX / (6 * 448), dtype=np.float32))
    else:
        packed = TensorBytes(f"{module}.weight_packed", "U8", q.packed.shape, q.packed.tobytes())
        second = _f32(f"{module}.weight_global_scale", np.array([q.second], dtype=np.float32))
        act = _f32(f"{module}.input_global_scale", np.array([6 * 448 / INPUT_AMAX], dtype=np.float32))
    return [packed, scale, second, act], q.dequantized


def _f32(name: str, values: np.ndarray) -> TensorBytes:
    values = np.ascontiguousarray(values, dtype="<f4")
    return TensorBytes(name, "F32", values.shape, values.tobytes())


def quantization_config(scheme: str) -> dict:
    """config.json's quantization_config, as each exporter writes it."""
    if scheme.startswith("modelopt"):
        algo = "NVFP4" if scheme.endswith("nvfp4") else "FP8"
        group = {"weights": {"dynamic": False, "num_bits": 4 if algo == "NVFP4" else 8, "type": "float"}}
        return {
            "config_groups": {"group_0": {**group, "targets": ["Linear"]}},
            "ignore": ["lm_head", f"model.layers.{IGNORED_LAYER}.mlp*"],
            "quant_algo": algo,
            "producer": {"name": "modelopt", "version": "0.39.0"},
            "quant_method": "modelopt",
        }
    if scheme == "hf-fp8-block":
        return {
            "quant_method": "fp8",
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "weight_block_size": list(FP8_BLOCK),
            "modules_to_not_convert": ["lm_head", f"layers.{IGNORED_LAYER}.mlp"],
        }
    return _ct_config(scheme)


def _ct_config(scheme: str) -> dict:
    if scheme == "ct-nvfp4":  # compressed-tensors' NVFP4 preset (quant_scheme.NVFP4) as it serializes
        fmt = "nvfp4-pack-quantized"
        fp4 = {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}
        weights = fp4 | {"scale_dtype": "torch.float8_e4m3fn"}
        acts: dict = fp4 | {"scale_dtype": "torch.float8_e4m3fn", "observer": "static_minmax"}
    else:
        fmt = "float-quantized"
        if scheme == "ct-fp8-channel":
            weights = {"num_bits": 8, "type": "float", "strategy": "channel"}
        else:
            weights = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": list(FP8_BLOCK)}
        acts = {"num_bits": 8, "type": "float", "strategy": "tensor"}
    weights |= {"symmetric": True, "dynamic": False}
    acts |= {"symmetric": True, "dynamic": "local" if scheme == "ct-nvfp4" else False}
    group = {"targets": ["Linear"], "weights": weights, "input_activations": acts, "format": fmt}
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "config_groups": {"group_0": group},
        "ignore": ["lm_head", rf"re:.*layers\.{IGNORED_LAYER}\.mlp\..*"],
        "quantization_status": "compressed",
        "kv_cache_scheme": None,
    }


def _write_config(src: Path, out: Path, scheme: str, config_json: bool) -> None:
    config = json.loads((src / "config.json").read_text())
    declared = quantization_config(scheme)
    if config_json:
        config["quantization_config"] = declared
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if scheme.startswith("modelopt"):
        quantization = {
            "quant_algo": declared["quant_algo"],
            "kv_cache_quant_algo": None,
            "exclude_modules": declared["ignore"],
        }
        if declared["quant_algo"] == "NVFP4":
            quantization["group_size"] = 16
        side = {"producer": declared["producer"], "quantization": quantization}
        (out / "hf_quant_config.json").write_text(json.dumps(side, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
