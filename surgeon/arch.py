"""Attention geometry of each decoder layer: heads, kv heads and head size.

Read from config.json where it is explicit (Gemma 4's per-layer head_dim and kv-head count
on full-attention layers included) and checked against the tensor shapes; where the two
disagree, or the config is missing, the shapes win (q_norm's length is the head size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from surgeon.layers import parse_name
from surgeon.safetensors_format import TensorInfo

ATTENTION_PROJ = re.compile(r"(?:^|\.)(?P<proj>[qkvo])_proj(?:\.linear)?\.weight$")


@dataclass(frozen=True)
class AttentionGeometry:
    num_heads: int
    head_dim: int
    num_kv_heads: int | None
    layer_type: str | None
    source: str  # "config" or "shapes": where the head size came from


def text_config(config: dict | None, stack: str | None) -> dict:
    """The sub-config that describes a layer stack (text, vision or audio)."""
    if not config:
        return {}
    for key in ("vision", "audio"):
        if stack and key in stack and isinstance(config.get(f"{key}_config"), dict):
            return config[f"{key}_config"]
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return config


def _per_layer_overrides(cfg: dict, layer: int) -> dict:
    overrides = cfg.get("per_layer_config")
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if str(key).isdigit() and int(key) == layer and isinstance(value, dict):
                return value
        return {}
    layer_types = cfg.get("layer_types") or []
    is_full = layer < len(layer_types) and layer_types[layer] == "full_attention"
    if not is_full:
        return {}
    # Gemma 4 before per_layer_config: global_* keys describe the full-attention layers.
    result = {}
    if "global_head_dim" in cfg:
        result["head_dim"] = cfg["global_head_dim"]
    if cfg.get("num_global_key_value_heads") and cfg.get("attention_k_eq_v", True):
        result["num_key_value_heads"] = cfg["num_global_key_value_heads"]
    return result


def config_geometry(cfg: dict, layer: int) -> tuple[int | None, int | None, int | None, str | None]:
    """(heads, head_dim, kv_heads, layer_type) as the config states them for one layer."""
    heads = cfg.get("num_attention_heads")
    overrides = _per_layer_overrides(cfg, layer)
    head_dim = overrides.get("head_dim", cfg.get("head_dim"))
    if head_dim is None and heads and cfg.get("hidden_size"):
        head_dim = cfg["hidden_size"] // heads
    kv_heads = overrides.get("num_key_value_heads", cfg.get("num_key_value_heads", heads))
    layer_types = cfg.get("layer_types") or []
    layer_type = layer_types[layer] if layer < len(layer_types) else None
    return heads, head_dim, kv_heads, layer_type


def layer_geometry(
    config: dict | None, stack: str | None, layer: int, tensors: dict[str, TensorInfo]
) -> AttentionGeometry | None:
    """Geometry of one layer, given that layer's tensors keyed by family."""
    heads, head_dim, kv_heads, layer_type = config_geometry(text_config(config, stack), layer)
    q_rows = _proj_dim(tensors, "q", axis=0)
    k_rows = _proj_dim(tensors, "k", axis=0)
    if q_rows is None:
        q_rows = _proj_dim(tensors, "o", axis=1)
    if q_rows is None:
        return None
    source = "config"
    if not (heads and head_dim and heads * head_dim == q_rows):
        source = "shapes"
        norm = next((t for fam, t in tensors.items() if fam.endswith("attn.q_norm.weight")), None)
        if norm is not None and len(norm.shape) == 1 and norm.shape[0] and q_rows % norm.shape[0] == 0:
            head_dim = norm.shape[0]
            heads = q_rows // head_dim
        elif heads and q_rows % heads == 0:
            head_dim = q_rows // heads
        else:
            return None
    if k_rows is not None and head_dim and k_rows % head_dim == 0:
        kv_heads = k_rows // head_dim
    return AttentionGeometry(heads, head_dim, kv_heads, layer_type, source)


def _proj_dim(tensors: dict[str, TensorInfo], proj: str, axis: int) -> int | None:
    for family, info in tensors.items():
        match = ATTENTION_PROJ.search(family)
        if match and match["proj"] == proj and len(info.shape) == 2 and "self_attn" in family:
            return info.shape[axis]
    return None


def geometry_by_layer(config: dict | None, tensors: dict[str, TensorInfo]) -> dict[tuple[str, int], AttentionGeometry]:
    """Geometry of every layer of every stack that has attention projections."""
    by_layer: dict[tuple[str, int], dict[str, TensorInfo]] = {}
    for name, info in tensors.items():
        parsed = parse_name(name)
        if parsed.stack is not None:
            by_layer.setdefault((parsed.stack, parsed.layer), {})[parsed.family] = info
    result = {}
    for (stack, layer), layer_tensors in by_layer.items():
        geometry = layer_geometry(config, stack, layer, layer_tensors)
        if geometry is not None:
            result[(stack, layer)] = geometry
    return result


def head_axis(family: str) -> tuple[str, str] | None:
    """For an attention projection, ("rows" or "cols", "q"/"k"/"v"/"o"); else None."""
    match = ATTENTION_PROJ.search(family)
    if match is None or "attn" not in family:
        return None
    proj = match["proj"]
    return ("cols" if proj == "o" else "rows"), proj
