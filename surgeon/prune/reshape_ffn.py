"""Reshape mode for MLP channels (issue 22): take the channels a mask-mode prune zeroed out
of the shapes.

Mask mode zeroes a removed channel's gate_proj and up_proj rows (and their biases) and its
down_proj input column. Reshape slices them out and sets `intermediate_size`, which
transformers reads as one number for every layer (a per-layer list only where the config
has one, as Gemma 3n's): so every layer must remove the same number of channels. down_proj's
bias keeps its shape. As for heads, the removed channels are read from the bytes (all three
zero), never from a manifest; torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.dtypes import to_float64
from surgeon.format.reshaped import NewTensor
from surgeon.format.safetensors import TensorInfo
from surgeon.model.names import parse_name
from surgeon.text import layer_ranges

MASK_MODE = "mask mode (zeroed channels, every shape kept) is what it stays"
_PARTS = ("gate", "up", "down")


@dataclass
class LayerChannels:
    """One decoder layer's dense MLP: its gate/up/down weights and biases, and the channels
    whose gate and up rows, their biases and down column are all zero."""

    layer: int
    tensors: dict[str, TensorInfo]  # "gate", "up", "down" weights, "gate_bias", "up_bias", "down_bias"
    width: int
    removed: list[int]

    def kept(self) -> list[int]:
        gone = set(self.removed)
        return [c for c in range(self.width) if c not in gone]


def mlp_tensors(ckpt: Checkpoint, stack: str) -> dict[int, dict[str, TensorInfo]]:
    """Per layer of `stack`, its mlp.gate/up/down_proj weights and biases, in one pass over the names."""
    found: dict[int, dict[str, TensorInfo]] = {}
    for name, info in ckpt.tensors.items():
        parsed = parse_name(name)
        if parsed.stack != stack or parsed.layer is None or not parsed.family.startswith("mlp."):
            continue
        for part in _PARTS:
            if parsed.family == f"mlp.{part}_proj.weight":
                found.setdefault(parsed.layer, {})[part] = info
            elif parsed.family == f"mlp.{part}_proj.bias":
                found.setdefault(parsed.layer, {})[f"{part}_bias"] = info
    return found


def find_channels(ckpt: Checkpoint, stack: str, layers: list[int], read_raw) -> list[LayerChannels]:
    """Each layer's MLP with its removed channels read from the bytes (`read_raw(ckpt, info)`:
    the tensor's raw elements in its shape). A layer without a dense gate/up/down MLP of
    consistent shapes has none removed and nothing to slice."""
    found = mlp_tensors(ckpt, stack)
    out = []
    for layer in layers:
        tensors = found.get(layer, {})
        width = _width(tensors)
        if width is None:
            out.append(LayerChannels(layer, tensors, 0, []))
            continue
        zero = np.ones(width, dtype=bool)
        for key, axis in (("gate", 1), ("up", 1), ("down", 0), ("gate_bias", None), ("up_bias", None)):
            info = tensors.get(key)
            if info is None:
                continue
            values = to_float64(read_raw(ckpt, info), info.dtype)
            zero &= values == 0 if axis is None else ~np.any(values != 0, axis=axis)
        out.append(LayerChannels(layer, tensors, width, [int(c) for c in np.flatnonzero(zero)]))
    return out


def planned_channels(ckpt: Checkpoint, stack: str, layers: list[int], removed: dict[int, list[int]]):
    """Each layer's MLP from the headers alone, with the channels `removed` says (a plan's preview)."""
    found = mlp_tensors(ckpt, stack)
    out = []
    for layer in layers:
        tensors = found.get(layer, {})
        width = _width(tensors) or 0
        out.append(LayerChannels(layer, tensors, width, sorted({c for c in removed.get(layer, []) if c < width})))
    return out


def _width(tensors: dict[str, TensorInfo]) -> int | None:
    """The channels, where gate and up are channels x hidden and down hidden x channels."""
    if any(tensors.get(p) is None or len(tensors[p].shape) != 2 for p in _PARTS):
        return None
    gate, up, down = (tuple(tensors[p].shape) for p in _PARTS)
    if gate != up or down != gate[::-1]:
        return None
    for key in ("gate_bias", "up_bias"):
        if key in tensors and tuple(tensors[key].shape) != (gate[0],):
            return None
    return gate[0]


def any_removed(layers: list[LayerChannels]) -> bool:
    return any(c.removed for c in layers)


def check_channels(source: str, layers: list[LayerChannels], config: dict) -> None:
    """SurgeonError, one line naming the layers, unless the channels removed can be sliced
    into a config transformers reads: one intermediate_size (every layer the same width,
    the config's, and the same number removed) or a per-layer list of them."""
    found = _problem(layers, config)
    if found is not None:
        raise SurgeonError(f"{source}: {found[0]}: {found[1]}; {MASK_MODE}")


def channels_problem(layers: list[LayerChannels], config: dict) -> str | None:
    """check_channels' refusal in a few words (a TUI's plan line), None where it would pass."""
    found = _problem(layers, config)
    return None if found is None else found[0]


def _problem(layers: list[LayerChannels], config: dict) -> tuple[str, str] | None:
    """(what, why) the removed channels cannot be sliced, or None."""
    if not any_removed(layers):
        return None
    untouched = [c.layer for c in layers if not c.removed]
    if untouched:
        return (
            f"MLP channels are removed in layers {layer_ranges([c.layer for c in layers if c.removed])} only, "
            f"none in layers {layer_ranges(untouched)}",
            "transformers reads one intermediate_size for every layer, so this cannot be reshaped",
        )
    if isinstance(config.get("intermediate_size"), list):
        return None  # one size per layer: each layer states its own
    size = config.get("intermediate_size")
    other = [c.layer for c in layers if c.width != size]
    if other:
        return (
            f"layers {layer_ranges(other)} have an MLP wider or narrower than intermediate_size ({size})",
            "one intermediate_size cannot state them all",
        )
    counts: dict[int, list[int]] = {}
    for c in layers:
        counts.setdefault(len(c.removed), []).append(c.layer)
    if len(counts) > 1:
        said = "; ".join(f"{n} in layers {layer_ranges(where)}" for n, where in sorted(counts.items()))
        return (
            f"layers remove different numbers of MLP channels ({said})",
            "transformers reads one intermediate_size for every layer",
        )
    return None


def set_intermediate_size(cfg: dict, layers: list[LayerChannels]) -> None:
    """The text config's intermediate_size after the slicing (each entry of a per-layer list)."""
    if not any_removed(layers):
        return
    sizes = cfg.get("intermediate_size")
    if isinstance(sizes, list):
        by_layer = {c.layer: c for c in layers}
        cfg["intermediate_size"] = [
            len(by_layer[i].kept()) if i in by_layer and by_layer[i].width else size for i, size in enumerate(sizes)
        ]
    else:
        cfg["intermediate_size"] = len(layers[0].kept())


def sliced_channels(ckpt: Checkpoint, layers: list[LayerChannels], slice_tensor) -> dict[str, NewTensor]:
    """gate/up rows and their biases, and down columns, of the removed channels sliced out
    (`slice_tensor(ckpt, info, index, axis)`)."""
    out = {}
    for channels in layers:
        if not channels.removed:
            continue
        kept = np.asarray(channels.kept(), dtype=np.int64)
        plan = {"gate": 0, "up": 0, "gate_bias": 0, "up_bias": 0, "down": 1}
        for key, axis in plan.items():
            info = channels.tensors.get(key)
            if info is not None:
                out[info.name] = slice_tensor(ckpt, info, kept, axis)
    return out


def channel_record(channels: LayerChannels) -> dict:
    """The reshape block's FFN fields of one layer (the kept channels: the others of the width)."""
    return {"ffn_width": channels.width, "ffn_removed_channels": channels.removed}
