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

from surgeon.format.checkpoint import Checkpoint
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
    layers = record.get("layers") or []
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
