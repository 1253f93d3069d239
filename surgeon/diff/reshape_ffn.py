"""The MLP channels a reshape sliced out (issue 22), for `surgeon diff`: OTHER's gate_proj
and up_proj (rows, and their biases) and down_proj (columns) are BASE's less whole channels,
same dtype. Which channels went comes from OTHER's prune_manifest.json (`ffn_removed_channels`
of its reshape block) where that fits the shapes, else from gate_proj's and up_proj's rows: a
kept channel's rows are byte-identical to BASE's, in BASE's order (a channel BASE has twice
leaves the matching not established).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from surgeon.diff.reshape import Entry, _manifest_layers
from surgeon.diff.reshape_rows import readable
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.safetensors import TensorInfo
from surgeon.format.tensor_io import ShardReader

# family -> (projection, axis of the channels)
_FAMILIES = {
    "mlp.gate_proj.weight": ("gate_proj", "rows"),
    "mlp.up_proj.weight": ("up_proj", "rows"),
    "mlp.down_proj.weight": ("down_proj", "cols"),
    "mlp.gate_proj.bias": ("gate_proj", "rows"),
    "mlp.up_proj.bias": ("up_proj", "rows"),
}


@dataclass(frozen=True)
class SlicedChannels:
    """One tensor a reshape sliced channels out of."""

    layer: int
    projection: str
    axis: str  # rows (gate, up) or cols (down)
    width: int  # BASE's channels
    kept: list[int] | None  # BASE's channel of each of OTHER's, None where not established
    source: str  # "manifest", "rows", or "" where not established


def find_channel_slices(base: Checkpoint, other: Checkpoint, tensors: Sequence[Entry]) -> dict[str, SlicedChannels]:
    """Tensor name -> how its channels were sliced, for the retyped MLP projections whose
    shape is BASE's less some channels."""
    layers: dict[tuple[str | None, int], dict[str, str]] = {}
    for t in tensors:
        if t.status != "retyped" or t.layer is None or t.family not in _FAMILIES:
            continue
        if _narrower(base.tensors[t.name], other.tensors[t.name], _FAMILIES[t.family][1]):
            layers.setdefault((t.stack, t.layer), {})[t.family] = t.name
    if not layers:
        return {}
    claims, _ = _manifest_layers(other)
    out = {}
    for (_, layer), names in sorted(layers.items(), key=lambda item: item[0][1]):
        kept, source = _kept(base, other, names, (claims or {}).get(layer))
        for family, name in names.items():
            projection, axis = _FAMILIES[family]
            width = base.tensors[name].shape[0 if axis == "rows" else 1]
            fits = kept is not None and len(kept) == other.tensors[name].shape[0 if axis == "rows" else 1]
            out[name] = SlicedChannels(layer, projection, axis, width, kept if fits else None, source if fits else "")
    return out


def _narrower(b: TensorInfo, o: TensorInfo, axis: str) -> bool:
    """Same dtype and rank, fewer channels on the channel axis, every other axis alike."""
    if b.dtype != o.dtype or len(b.shape) != len(o.shape) or not b.shape:
        return False
    at = 0 if axis == "rows" or len(b.shape) == 1 else 1
    rest = [n for i, n in enumerate(b.shape) if i != at] == [n for i, n in enumerate(o.shape) if i != at]
    return rest and 0 < o.shape[at] < b.shape[at]


def _kept(base: Checkpoint, other: Checkpoint, names: dict[str, str], claim: dict | None):
    gate = names.get("mlp.gate_proj.weight")
    if gate is None:
        return None, ""
    width, left = base.tensors[gate].shape[0], other.tensors[gate].shape[0]
    removed = claim.get("ffn_removed_channels") if isinstance(claim, dict) else None
    if (
        isinstance(removed, list)
        and all(type(c) is int for c in removed)
        and removed == sorted(set(removed))
        and all(0 <= c < width for c in removed)
        and width - len(removed) == left
    ):
        gone = set(removed)
        return [c for c in range(width) if c not in gone], "manifest"
    up = names.get("mlp.up_proj.weight")
    rows = [gate] if up is None or base.tensors[up].shape[0] != width else [gate, up]
    return _by_rows(base, other, rows), "rows"


def _by_rows(base: Checkpoint, other: Checkpoint, names: list[str]) -> list[int] | None:
    """OTHER's channels (their gate and up rows together) matched in order to BASE's equal
    ones; None where one has no match, or where a match is not the only one (BASE has two
    channels alike in those rows: which of them went would be a guess)."""
    if not all(readable(base.tensors[n]) and readable(other.tensors[n]) for n in names):
        return None
    theirs = _channel_digests(base, [base.tensors[n] for n in names])
    mine = _channel_digests(other, [other.tensors[n] for n in names])
    if theirs is None or mine is None:
        return None
    counts: dict[bytes, int] = {}
    for digest in theirs:
        counts[digest] = counts.get(digest, 0) + 1
    kept, at = [], 0
    for digest in mine:
        if counts.get(digest, 0) > 1:
            return None
        while at < len(theirs) and theirs[at] != digest:
            at += 1
        if at == len(theirs):
            return None
        kept.append(at)
        at += 1
    return kept


def _channel_digests(ckpt: Checkpoint, infos: list[TensorInfo]) -> list[bytes] | None:
    """Each channel's rows of `infos` (as many rows each), hashed together."""
    count = infos[0].shape[0]
    if any(info.shape[0] != count for info in infos):
        return None
    digests = [hashlib.blake2b(digest_size=16) for _ in range(count)]
    for info in infos:
        row = info.nbytes // count
        with ShardReader(ckpt.shard_path(info.file)) as reader:
            for i in range(count):
                digests[i].update(reader.read(info.start + i * row, row))
    return [d.digest() for d in digests]
