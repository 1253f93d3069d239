"""Attention geometry of each decoder layer: heads, kv heads and head size.

Read from config.json where it is explicit (Gemma 4's per-layer head_dim and kv-head count
on full-attention layers included) and checked against the tensor shapes; where the two
disagree, or the config is missing, the shapes win (q_norm's length is the head size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from surgeon.errors import SurgeonError, first_line
from surgeon.format.safetensors import TensorInfo
from surgeon.model.names import parse_name
from surgeon.text import inert, shown  # shown: re-exported, its users import it from here

ATTENTION_PROJ = re.compile(r"(?:^|\.)(?P<proj>[qkvo])_proj(?:\.linear)?\.weight$")


@dataclass(frozen=True)
class AttentionGeometry:
    num_heads: int
    head_dim: int
    num_kv_heads: int | None
    layer_type: str | None
    source: str  # "config" or "shapes": where the head size came from


SUB_CONFIGS = ("text_config", "llm_config", "language_config", "vision_config", "audio_config")
# Keys transformers needs as positive integers: null is as wrong as "8" for these.
REQUIRED_INTS = ("num_attention_heads", "hidden_size", "num_hidden_layers")
# Keys where null means "derive it" (head_dim = hidden_size / heads, kv heads = heads).
OPTIONAL_INTS = ("head_dim", "num_key_value_heads", "global_head_dim", "num_global_key_value_heads", "sliding_window")


def text_config(config: dict | None, stack: str | None) -> dict:
    """The sub-config that describes a layer stack (text, vision or audio)."""
    return _sub_config(config, stack)[0]


def _sub_config(config: dict | None, stack: str | None) -> tuple[dict, str]:
    """(sub-config, its key with a dot, or "" for the top level)."""
    if not config:
        return {}, ""
    for key in ("vision", "audio"):
        if stack and key in stack and isinstance(config.get(f"{key}_config"), dict):
            return config[f"{key}_config"], f"{key}_config."
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(config.get(key), dict):
            return config[key], f"{key}."
    return config, ""


def config_int(cfg: dict, key: str, where: str | None = None, prefix: str = "", null_ok: bool = True) -> int | None:
    """cfg[key] as a positive integer, or None where it is absent (or null, with null_ok).

    Any other value ("8", 8.0, [8], true, -1) is, with `where` (the config file), a
    SurgeonError naming the key: prune and the canary build a model from it. Without
    `where` it reads as absent: diff and inspect only label heads with the config, and the
    tensor shapes decide.
    """
    value = cfg.get(key)
    if type(value) is int and value > 0:
        return value
    if where is None or key not in cfg or (value is None and null_ok):
        return None
    raise SurgeonError(f"{where}: {prefix}{key} must be a positive integer (got {shown(value)})")


def check_config(config: dict | None, where: str) -> None:
    """Every config value surgeon reads, checked before a model is built from it: a value
    of the wrong type is one SurgeonError naming its key, never a TypeError deep inside
    transformers. Values surgeon does not read are left to transformers (config_error)."""
    if config is None:
        return
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise SurgeonError(f"{where}: model_type must be a string (got {shown(model_type)})")
    for key in SUB_CONFIGS:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise SurgeonError(f"{where}: {key} must be an object (got {shown(config[key])})")
    cfg, prefix = _sub_config(config, None)
    for key in REQUIRED_INTS + OPTIONAL_INTS:
        config_int(cfg, key, where, prefix, null_ok=key in OPTIONAL_INTS)
    _check_layer_types(cfg, where, prefix)
    _check_per_layer(cfg, where, prefix)
    cap = cfg.get("final_logit_softcapping")
    if cap is not None and (type(cap) not in (int, float) or not 0 < cap < float("inf")):
        raise SurgeonError(f"{where}: {prefix}final_logit_softcapping must be a positive number (got {shown(cap)})")


def _check_layer_types(cfg: dict, where: str, prefix: str) -> None:
    types = cfg.get("layer_types")
    if types is not None and not (isinstance(types, list) and all(isinstance(t, str) for t in types)):
        raise SurgeonError(f"{where}: {prefix}layer_types must be a list of strings (got {shown(types)})")


def _check_per_layer(cfg: dict, where: str, prefix: str) -> None:
    overrides = cfg.get("per_layer_config")
    if overrides is None:
        return
    if not isinstance(overrides, dict):
        raise SurgeonError(f"{where}: {prefix}per_layer_config must be an object (got {shown(overrides)})")
    for layer, value in overrides.items():
        name = f"{prefix}per_layer_config.{inert(layer[:20])}"
        if not isinstance(value, dict):
            raise SurgeonError(f"{where}: {name} must be an object (got {shown(value)})")
        for key in OPTIONAL_INTS:
            config_int(value, key, where, name + ".")


def config_error(exc: BaseException, where: str) -> SurgeonError | None:
    """transformers' own check of a config value (a huggingface_hub strict-dataclass error
    raised inside AutoConfig or from_pretrained) as one line naming the key; None when
    `exc` is something else. Measured on transformers 5: a string vocab_size reads
    "vocab_size is not valid (Field 'vocab_size' expected int, got str (value: '512'))"."""
    if not any(cls.__name__ == "StrictDataclassError" for cls in type(exc).__mro__):
        return None
    field = re.search(r"field '([^']{1,100})'", str(exc))
    first = first_line(exc.__cause__ if exc.__cause__ is not None else exc)
    first = inert(first if len(first) <= 200 else first[:197] + "...")
    return SurgeonError(f"{where}: {inert(field[1]) + ' is not valid' if field else 'not valid'} ({first})")


def _per_layer_overrides(cfg: dict, layer: int) -> dict:
    overrides = cfg.get("per_layer_config")
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            if _layer_index(key) == layer and isinstance(value, dict):
                return value
        return {}
    layer_types = _layer_types(cfg)
    is_full = layer < len(layer_types) and layer_types[layer] == "full_attention"
    if not is_full:
        return {}
    # Gemma 4 before per_layer_config: global_* keys describe the full-attention layers.
    result = {}
    if config_int(cfg, "global_head_dim"):
        result["head_dim"] = cfg["global_head_dim"]
    if config_int(cfg, "num_global_key_value_heads") and cfg.get("attention_k_eq_v", True):
        result["num_key_value_heads"] = cfg["num_global_key_value_heads"]
    return result


def _layer_index(key: object) -> int | None:
    """A per_layer_config key as a layer number: transformers 5 writes them zero-padded to the
    widest index ("05" among 60 layers) and reads them back with int()."""
    if isinstance(key, int):
        return key
    # at most 9 digits once the zeros are off: no layer numbers past that, and int() of a
    # hostile 5000-digit key raises (Python's int max str digits), which was an internal error
    digits = key.lstrip("0") if isinstance(key, str) and key.isascii() and key.isdigit() else None
    return None if digits is None or len(digits) > 9 else int(digits or "0")


def _layer_types(cfg: dict) -> list:
    types = cfg.get("layer_types")
    return types if isinstance(types, list) else []


def config_geometry(cfg: dict, layer: int) -> tuple[int | None, int | None, int | None, str | None]:
    """(heads, head_dim, kv_heads, layer_type) as the config states them for one layer; a
    value of the wrong type reads as absent (check_config is where it is an error)."""
    heads = config_int(cfg, "num_attention_heads")
    overrides = _per_layer_overrides(cfg, layer)
    head_dim = config_int(overrides, "head_dim") or config_int(cfg, "head_dim")
    hidden = config_int(cfg, "hidden_size")
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    kv_heads = config_int(overrides, "num_key_value_heads") or config_int(cfg, "num_key_value_heads") or heads
    layer_types = _layer_types(cfg)
    layer_type = layer_types[layer] if layer < len(layer_types) else None
    return heads, head_dim, kv_heads, layer_type if isinstance(layer_type, str) else None


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
        if parsed.stack is not None and parsed.layer is not None:  # both set or both None
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
