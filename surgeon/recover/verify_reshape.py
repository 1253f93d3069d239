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
from surgeon.model.geometry import config_geometry, layer_geometry, text_config
from surgeon.model.names import parse_name
from surgeon.recover.verify_reshape_ffn import check_channels
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
    missing = sorted({index for index, key in names[0] if key == "q"} - {layer["layer"] for layer in layers})
    if missing:  # reshape slices every layer: one left out would have its rows never compared
        which = f"layer{'s' if len(missing) > 1 else ''} {layer_ranges(missing)}"
        problems.append(
            f"{which}: not in the manifest's reshape block (a reshape slices every layer): its rows go unchecked"
        )
    ours, theirs = SafetensorsRows(ckpt), SafetensorsRows(base)
    for layer in layers:
        problems += _check_config(layer, cfg, after)
        problems += _check_heads(layer, names[0], base)
        problems += _check_layer(layer, names, ours, theirs)
    ffn_checks, ffn_problems = check_channels(layers, _main_stack(base) or "", base, ckpt, cfg)
    problems += ffn_problems
    if problems:
        return [], problems
    kept = layer_ranges([layer["layer"] for layer in layers])
    held = f"the reshape's claims hold: layers {kept} keep the base's q, k and v rows of the heads it names"
    return [held, *ffn_checks], []


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


def _check_config(layer: Mapping[str, Any], cfg: dict, after: object) -> list[str]:
    """config.json states what the layer keeps: its head size and KV heads (the query heads
    are checked once for every layer above)."""
    _, head_dim, kv_heads, _ = config_geometry(cfg, layer["layer"])
    if (head_dim, kv_heads) != (layer["head_dim"], len(layer["kept_kv_heads"])):
        return [
            f"layer {layer['layer']}: config.json states head size {head_dim} and {kv_heads} KV heads, the reshape "
            f"{layer['head_dim']} and {len(layer['kept_kv_heads'])}"
        ]
    if len(layer["kept_heads"]) != after:
        return [f"layer {layer['layer']}: the reshape keeps {len(layer['kept_heads'])} query heads, not {after}"]
    return []


def _check_heads(layer: Mapping[str, Any], base_names: dict[tuple[int, str], str], base: Checkpoint) -> list[str]:
    """The kept heads are a slice the base's geometry allows: query heads in the base's order
    (query head i reads KV head i // group, so an order changed is another model), of the
    base's head size, every KV group kept whole, in order, with the same number of them."""
    index, dim, kept, kv = layer["layer"], layer["head_dim"], layer["kept_heads"], layer["kept_kv_heads"]
    q_name, k_name = base_names.get((index, "q")), base_names.get((index, "k"))
    if q_name is None or k_name is None:
        return []  # _check_layer says which projection is missing
    projections = {"self_attn.q_proj.weight": base.tensors[q_name], "self_attn.k_proj.weight": base.tensors[k_name]}
    geometry = layer_geometry(base.config, None, index, projections)
    heads = base.tensors[q_name].shape[0] // dim
    kv_heads = base.tensors[k_name].shape[0] // dim
    if geometry is not None and geometry.head_dim != dim:
        return [f"layer {index}: the reshape says head size {dim}, the base's is {geometry.head_dim}"]
    in_order = kept == sorted(set(kept)) and all(h < heads for h in kept)
    if not kv_heads or heads % kv_heads or not in_order:
        return [f"layer {index}: kept heads {kept} are not heads of the base in its order"]
    group = heads // kv_heads
    per_group = Counter(h // group for h in kept)
    if kv != sorted(per_group) or len(set(per_group.values())) > 1:
        return [f"layer {index}: kept heads {kept} and KV heads {kv} are not whole, balanced KV groups of the base"]
    return []


def _main_stack(ckpt: Checkpoint) -> str | None:
    stacks = Counter(p.stack for p in map(parse_name, ckpt.tensors) if p.stack is not None)
    return stacks.most_common(1)[0][0] if stacks else None


def _projections(ckpt: Checkpoint) -> dict[tuple[int, str], str]:
    """(layer, q|k|v|o) -> tensor name in the main layer stack."""
    found: dict[tuple[int, str], str] = {}
    parsed = {name: parse_name(name) for name in ckpt.tensors}
    main = _main_stack(ckpt)
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
        if any((head + 1) * dim > theirs.tensors[base_name].shape[0] for head in heads):
            return [f"layer {index}: the reshape names {key} heads the base's {key}_proj does not have"]
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
