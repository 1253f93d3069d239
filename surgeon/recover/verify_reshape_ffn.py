"""`surgeon verify` of a reshape that sliced MLP channels (issue 22): each layer's record
(`ffn_width`, `ffn_removed_channels`) held against the bytes and the config. The slicing
moves nothing else, so the kept channels' gate_proj and up_proj rows (and biases) are the
base's rows of those channels, value for value; down_proj keeps one column per kept channel
(its values are the heal's); config.json's intermediate_size is the kept count. Rows are
read a run of consecutive kept channels at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.manifest import MANIFEST_NAME
from surgeon.format.rows import SafetensorsRows
from surgeon.prune.reshape_ffn import mlp_tensors
from surgeon.text import layer_ranges


def ffn_layers(layers: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The layer entries that sliced channels, each checked for the types verify reads."""
    out = []
    for layer in layers:
        if "ffn_removed_channels" not in layer and "ffn_width" not in layer:
            continue
        width, removed = layer.get("ffn_width"), layer.get("ffn_removed_channels")
        if type(width) is not int or width < 1 or not isinstance(removed, list):
            raise SurgeonError(f"{MANIFEST_NAME}: reshape layer {layer['layer']}: malformed ffn_width or channels")
        if not all(type(c) is int for c in removed) or removed != sorted(set(removed)) or removed[-1:] >= [width]:
            raise SurgeonError(
                f"{MANIFEST_NAME}: reshape layer {layer['layer']}: ffn_removed_channels are not channels in order"
            )
        out.append(layer)
    return out


def check_channels(
    layers: list[Mapping[str, Any]], stack: str, base: Checkpoint, ckpt: Checkpoint, cfg: dict
) -> tuple[list[str], list[str]]:
    """(checks that held, discrepancies) of the layers' channel claims, and of every other
    layer's MLP being the base's shape (a slice the record leaves out goes unchecked)."""
    claimed = ffn_layers(layers)
    theirs, ours = mlp_tensors(base, stack), mlp_tensors(ckpt, stack)
    named = {layer["layer"] for layer in claimed}
    problems = [
        f"layer {index}: its MLP is not the base's shape, but the reshape block names no channel removed"
        for index in sorted(theirs)
        if index not in named and any(_shape(ours.get(index), k) != _shape(theirs[index], k) for k in _ALL)
    ]
    if not claimed:
        return [], problems
    rows = SafetensorsRows(ckpt), SafetensorsRows(base)
    for layer in claimed:
        problems += _check_layer(layer, theirs.get(layer["layer"], {}), ours.get(layer["layer"], {}), rows, cfg)
    if problems:
        return [], problems
    indices = layer_ranges(sorted(named))
    return [
        f"the reshape's MLP claims hold: layers {indices} keep the base's gate and up rows of the channels kept"
    ], []


_ALL = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")


def _shape(tensors: Mapping | None, key: str):
    info = (tensors or {}).get(key)
    return None if info is None else tuple(info.shape)


def _check_layer(layer, base: dict, mine: dict, rows: tuple[SafetensorsRows, SafetensorsRows], cfg: dict) -> list[str]:
    index, width, removed = layer["layer"], layer["ffn_width"], layer["ffn_removed_channels"]
    kept = [c for c in range(width) if c not in set(removed)]
    stated = _config_size(cfg, index)
    if stated != len(kept):
        return [f"layer {index}: config.json states intermediate_size {stated}, the reshape keeps {len(kept)} channels"]
    if any(key not in base or key not in mine for key in ("gate", "up", "down")):
        return [f"layer {index}: gate_proj, up_proj or down_proj is missing on one side"]
    if base["gate"].shape[0] != width:
        return [f"layer {index}: the reshape says {width} channels, the base's MLP has {base['gate'].shape[0]}"]
    if _shape(mine, "down") != (base["down"].shape[0], len(kept)):
        return [f"layer {index}: down_proj is {list(mine['down'].shape)}, not {len(kept)} kept channels"]
    for key in ("gate", "up"):
        problem = _same_rows(mine[key].name, base[key].name, kept, rows, f"layer {index}: {key}_proj")
        if problem:
            return [problem]
    for key in ("gate_bias", "up_bias"):
        if (key in base) != (key in mine):
            return [f"layer {index}: {key.replace('_', '_proj.')} is on one side only"]
        if key in base and not np.array_equal(
            _vector(rows[0], mine[key].name), _vector(rows[1], base[key].name)[kept], equal_nan=True
        ):
            return [f"layer {index}: {key.replace('_', '_proj.')} of the kept channels is not the base's"]
    return []


def _config_size(cfg: dict, index: int) -> object:
    size = cfg.get("intermediate_size")
    if isinstance(size, list):
        return size[index] if index < len(size) else None
    return size


def _same_rows(mine: str, base: str, kept: list[int], rows, what: str) -> str | None:
    ours, theirs = rows
    if ours.tensors[mine].shape[0] != len(kept):
        return f"{what} has {ours.tensors[mine].shape[0]} rows, not {len(kept)} kept channels"
    position = 0
    for start, stop in _runs(kept):
        count = stop - start
        if not np.array_equal(
            ours.read_rows(mine, position, position + count), theirs.read_rows(base, start, stop), equal_nan=True
        ):
            return f"{what}'s rows for channels {start}-{stop - 1} are not the base's"
        position += count
    return None


def _vector(rows: SafetensorsRows, name: str) -> np.ndarray:
    """A bias: a vector is one row to the row reader."""
    return rows.read_rows(name, 0, 1).reshape(-1)


def _runs(kept: list[int]) -> list[tuple[int, int]]:
    """Consecutive kept channels as [start, stop) runs: one read each."""
    runs: list[tuple[int, int]] = []
    for c in kept:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0], c + 1)
        else:
            runs.append((c, c + 1))
    return runs
