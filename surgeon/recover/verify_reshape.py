"""`surgeon verify` of a reshaped checkpoint (issue 21.5): the manifest's `reshape` block held
against the bytes and the config. Reshape slices rows and columns and moves nothing else, so
every kept query head's q_proj rows, and every kept KV head's k_proj and v_proj rows, are the
base's rows of that head, value for value; o_proj keeps one column block per kept head (its
values are the heal's, which only a re-run could check); and config.json states the kept
head count. Read a head at a time: memory is one head's rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.manifest import MANIFEST_NAME
from surgeon.format.rows import SafetensorsRows
from surgeon.model.geometry import config_geometry, text_config
from surgeon.model.names import parse_name
from surgeon.text import layer_ranges

PROJECTIONS = {"q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight"}


def check_reshape(record: Mapping[str, Any], base: Checkpoint, ckpt: Checkpoint) -> tuple[list[str], list[str]]:
    """(checks that held, discrepancies) of the `reshape` record against `base` and `ckpt`."""
    problems: list[str] = []
    after = record.get("num_heads_after")
    cfg = text_config(ckpt.config or {}, None)
    layers = record_layers(record)
    if not layers:
        return [], ["the manifest's reshape block names no layer: its claims cannot be checked"]
    for layer in layers:
        stated = config_geometry(cfg, layer["layer"])[0]
        if stated != after:
            problems.append(f"layer {layer['layer']}: config.json states {stated} query heads, the reshape {after}")
            break
    names = _projections(base), _projections(ckpt)
    ours, theirs = SafetensorsRows(ckpt), SafetensorsRows(base)
    for layer in layers:
        problems += _check_layer(layer, names, ours, theirs)
    if problems:
        return [], problems
    kept = layer_ranges([layer["layer"] for layer in layers])
    return [f"the reshape's claims hold: layers {kept} keep the base's q, k and v rows of the heads it names"], []


def record_layers(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The record's layer entries, each checked for the types verify reads (a manifest is
    data): SurgeonError, one line, for a malformed one."""
    layers = record.get("layers")
    if layers is None:
        return []
    if not isinstance(layers, list):
        raise SurgeonError(f"{MANIFEST_NAME}: reshape.layers is not a list: a malformed manifest")
    seen: set[int] = set()
    for position, layer in enumerate(layers):
        problem = _entry_problem(layer)
        if problem is None and layer["layer"] in seen:  # each entry costs reads: one per layer
            problem = f"layer {layer['layer']} is named twice"
        if problem is not None:
            raise SurgeonError(f"{MANIFEST_NAME}: reshape.layers[{position}]: {problem}: a malformed manifest")
        seen.add(layer["layer"])
    return layers


def _entry_problem(layer: object) -> str | None:
    if not isinstance(layer, dict):
        return "not an object"
    for key in ("layer", "head_dim"):
        if type(layer.get(key)) is not int or layer[key] < (key == "head_dim"):
            return f"{key} is not a {'positive' if key == 'head_dim' else 'non-negative'} integer"
    for key in ("kept_heads", "kept_kv_heads"):
        heads = layer.get(key)
        if not isinstance(heads, list) or not all(type(h) is int and h >= 0 for h in heads):
            return f"{key} is not a list of head numbers"
    return None


def _projections(ckpt: Checkpoint) -> dict[tuple[int, str], str]:
    """(layer, q|k|v|o) -> tensor name in the main layer stack."""
    found: dict[tuple[int, str], str] = {}
    parsed = {name: parse_name(name) for name in ckpt.tensors}
    stacks = Counter(p.stack for p in parsed.values() if p.stack is not None)
    main = stacks.most_common(1)[0][0] if stacks else None
    for name, p in parsed.items():
        for key, family in (*PROJECTIONS.items(), ("o", "self_attn.o_proj.weight")):
            if p.stack == main and p.layer is not None and p.family == family:
                found[(p.layer, key)] = name
    return found


def _check_layer(layer: Mapping[str, Any], names, ours: SafetensorsRows, theirs: SafetensorsRows) -> list[str]:
    index, dim = layer["layer"], layer["head_dim"]
    base_names, our_names = names
    kept = {"q": layer["kept_heads"], "k": layer["kept_kv_heads"], "v": layer["kept_kv_heads"]}
    for key, heads in kept.items():
        base_name, our_name = base_names.get((index, key)), our_names.get((index, key))
        if base_name is None and our_name is None:  # k_eq_v layers have no v_proj
            if key == "q":
                return [f"layer {index}: no q_proj in either checkpoint"]
            continue
        if base_name is None or our_name is None:
            return [f"layer {index}: {key}_proj is on one side only"]
        if ours.tensors[our_name].shape[0] != len(heads) * dim:
            return [
                f"layer {index}: {key}_proj has {ours.tensors[our_name].shape[0]} rows, not {len(heads)} heads of {dim}"
            ]
        for position, head in enumerate(heads):
            mine = ours.read_rows(our_name, position * dim, (position + 1) * dim)
            base = theirs.read_rows(base_name, head * dim, (head + 1) * dim)
            if not np.array_equal(mine, base, equal_nan=True):
                return [f"layer {index}: {key}_proj's rows for head {head} are not the base's"]
    o_name = our_names.get((index, "o"))
    if o_name is not None and ours.tensors[o_name].shape[-1] != len(layer["kept_heads"]) * dim:
        return [
            f"layer {index}: o_proj has {ours.tensors[o_name].shape[-1]} columns, not {len(layer['kept_heads'])} heads"
        ]
    return []
