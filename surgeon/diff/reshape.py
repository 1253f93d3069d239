"""A reshaped pair (issue 21.5): OTHER's attention projections are BASE's with whole heads
sliced out, as `surgeon prune --mode reshape` writes them: q_proj rows (and q bias) of the
removed query heads, k/v rows of whole dropped KV groups, o_proj input columns.

Which heads OTHER kept comes from its prune_manifest.json `reshape` block when that fits the
shapes, else from the rows: a head a reshape kept has q rows (k rows for a KV head)
byte-identical to BASE's, so each OTHER head is matched to the BASE head with the same
digest, in order (a reshape moves no head). Where a head matches none, which heads went is
not established, and a note says so rather than guess. Either way every kept head is then
compared with BASE's head it stands for (reshape_rows.py): names and the manifest are data,
and the verdict comes from the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol

from surgeon.diff.reshape_rows import head_digests, readable
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint
from surgeon.format.manifest import MANIFEST_NAME, read_manifest
from surgeon.format.safetensors import TensorInfo
from surgeon.model.geometry import geometry_by_layer
from surgeon.model.names import main_stack
from surgeon.text import inert, layer_ranges

PROJECTION = re.compile(r"(?:^|\.)self_attn\.(?P<proj>[qkvo])_proj\.(?P<kind>weight|bias)$")
MAX_MANIFEST_LAYERS = 100_000  # a manifest is data: a longer list is not read past this


class Entry(Protocol):
    """What detection reads of a tensor's diff (engine.TensorDiff)."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def stack(self) -> str | None: ...
    @property
    def layer(self) -> int | None: ...
    @property
    def family(self) -> str: ...


@dataclass
class ReshapedLayer:
    stack: str
    layer: int
    head_dim: int
    num_heads: list[int]  # [base, other]
    num_kv_heads: list[int | None]  # [base, other]; None without a k_proj
    kept_heads: list[int] | None  # BASE's query heads OTHER holds, in its order; None: not established
    kept_kv_heads: list[int] | None
    source: str  # "manifest" or "rows": where kept_heads came from
    note: str | None = None

    @property
    def removed_heads(self) -> list[int] | None:
        return _removed(self.num_heads[0], self.kept_heads)

    @property
    def removed_kv_heads(self) -> list[int] | None:
        return _removed(self.num_kv_heads[0], self.kept_kv_heads)


@dataclass(frozen=True)
class Sliced:
    """One reshaped tensor: its heads and which of BASE's heads OTHER's are."""

    layer: ReshapedLayer
    projection: str  # q_proj, k_proj, v_proj, o_proj
    axis: str  # rows (q/k/v, their biases) or cols (o_proj)
    num_heads: int  # BASE's
    kept: list[int] | None


@dataclass
class ReshapeFindings:
    manifest: bool  # OTHER has a manifest with a reshape block
    layers: list[ReshapedLayer]
    tensors: dict[str, Sliced] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_reshape(base: Checkpoint, other: Checkpoint, tensors: Sequence[Entry]) -> ReshapeFindings | None:
    """The reshaped layers of the pair, or None when no attention projection lost whole heads."""
    slots = _projections(base, other, tensors)
    stack = main_stack(t.stack for t in tensors)
    geometry = geometry_by_layer(base.config, base.tensors)
    claims, notes = _manifest_layers(other)
    found = ReshapeFindings(claims is not None, [], {}, notes)
    for (layer_stack, layer), projections in sorted(slots.items()):
        geo = geometry.get((layer_stack, layer))
        shapes = _layer_shapes(base, other, projections, geo.head_dim if geo else None)
        if shapes is None:
            continue
        claim = (claims or {}).get(layer) if layer_stack == stack else None
        reshaped = _layer(base, other, projections, (layer_stack, layer), shapes, claim, found.notes)
        found.layers.append(reshaped)
        found.tensors.update(_sliced(base, other, projections, reshaped))
    return found if found.layers else None


# ---------- which tensors: the attention projections of each layer ----------


def _projections(
    base: Checkpoint, other: Checkpoint, tensors: Sequence[Entry]
) -> dict[tuple[str, int], dict[str, str]]:
    """(stack, layer) -> {"q.weight": name, ...} for the projections on both sides."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for t in tensors:
        match = PROJECTION.search(t.family)
        if match is None or t.stack is None or t.layer is None:
            continue
        if t.name in base.tensors and t.name in other.tensors:
            found.setdefault((t.stack, t.layer), {})[f"{match['proj']}.{match['kind']}"] = t.name
    return found


def _layer_shapes(
    base, other, projections: dict[str, str], dim: int | None
) -> tuple[int, int, int, int | None, int | None] | None:
    """(head_dim, BASE's and OTHER's query heads, BASE's and OTHER's KV heads) where q_proj
    lost whole heads of BASE's size and kept its dtype and width; else None."""
    q = projections.get("q.weight")
    if q is None or not dim:
        return None
    b, o = base.tensors[q], other.tensors[q]
    if b.dtype != o.dtype or len(b.shape) != 2 or len(o.shape) != 2 or b.shape[1] != o.shape[1]:
        return None
    if b.shape[0] % dim or o.shape[0] % dim or not 0 < o.shape[0] < b.shape[0]:
        return None
    kv = [None, None]
    k = projections.get("k.weight")
    if k is not None and len(base.tensors[k].shape) == 2 and len(other.tensors[k].shape) == 2:
        rows = base.tensors[k].shape[0], other.tensors[k].shape[0]
        if not rows[0] % dim and not rows[1] % dim:
            kv = [rows[0] // dim, rows[1] // dim]
    return dim, b.shape[0] // dim, o.shape[0] // dim, kv[0], kv[1]


# ---------- which heads: the manifest's claim where it fits, else the rows ----------


def _layer(base, other, projections, where: tuple[str, int], shapes, claim, notes: list[str]) -> ReshapedLayer:
    dim, heads_b, heads_o, kv_b, kv_o = shapes
    layer = ReshapedLayer(where[0], where[1], dim, [heads_b, heads_o], [kv_b, kv_o], None, None, "rows")
    if claim is not None:
        kept, kept_kv = claim.get("kept_heads"), claim.get("kept_kv_heads")
        if (
            claim.get("head_dim") == dim
            and _fits(kept, heads_b, heads_o)
            and (kv_b is None or _fits(kept_kv, kv_b, kv_o))
        ):
            layer.kept_heads, layer.kept_kv_heads, layer.source = (
                kept,
                kept_kv if kv_b is not None else None,
                "manifest",
            )
            return layer
        notes.append(
            f"layer {where[1]}: the manifest's reshape entry does not fit the shapes; heads matched by their rows"
        )
    layer.kept_heads = _match(base, other, projections.get("q.weight"), dim, (heads_b, heads_o), layer, "query")
    if kv_b is not None and kv_b == kv_o:
        layer.kept_kv_heads = list(range(kv_b))  # no KV group went: k and v are compared as they are
    elif kv_b is not None:
        layer.kept_kv_heads = _match(base, other, projections.get("k.weight"), dim, (kv_b, kv_o), layer, "KV")
    return layer


def _fits(kept: object, before: int, after: int | None) -> bool:
    """A list of `after` increasing head numbers below `before`."""
    if not isinstance(kept, list) or len(kept) != after:
        return False
    if not all(type(h) is int and 0 <= h < before for h in kept):
        return False
    return all(a < b for a, b in pairwise(kept))


def _match(
    base, other, name: str | None, dim: int, counts: tuple[int, int], layer: ReshapedLayer, what: str
) -> list[int] | None:
    """BASE's head each OTHER head's rows are byte-identical to, in order; None (and a note)
    where one matches none."""
    if name is None or not (readable(base.tensors[name]) and readable(other.tensors[name])):
        layer.note = _join(layer.note, f"{what} heads not matched: their rows cannot be read")
        return None
    digests_b = head_digests(base.shard_path(base.tensors[name].file), base.tensors[name], counts[0], dim)
    digests_o = head_digests(other.shard_path(other.tensors[name].file), other.tensors[name], counts[1], dim)
    kept, unmatched, last = [], [], -1
    for position, digest in enumerate(digests_o):
        head = next((h for h in range(last + 1, counts[0]) if digests_b[h] == digest), None)
        if head is None:
            unmatched.append(position)
        else:
            kept.append(head)
            last = head
    if unmatched:
        layer.note = _join(
            layer.note,
            f"{len(unmatched)} of OTHER's {counts[1]} {what} heads (positions {layer_ranges(unmatched)}) match no "
            f"BASE head's rows: which {counts[0] - counts[1]} were removed is not established",
        )
        return None
    return kept


def _join(note: str | None, more: str) -> str:
    return more if note is None else f"{note}; {more}"


def _removed(before: int | None, kept: list[int] | None) -> list[int] | None:
    if before is None or kept is None:
        return None
    return sorted(set(range(before)) - set(kept))


# ---------- the manifest's claims ----------


def _manifest_layers(other: Checkpoint) -> tuple[dict[int, dict] | None, list[str]]:
    """{layer: its reshape entry} from OTHER's prune_manifest.json, None where it has no
    reshape block; entries of the wrong shape are left out (the rows decide those layers)."""
    if other.file is not None:
        return None, []
    try:
        manifest = read_manifest(other.root / MANIFEST_NAME)
    except SurgeonError as exc:
        return None, [f"{MANIFEST_NAME} not read: {inert(str(exc))}"]
    block = manifest.get("reshape") if isinstance(manifest, dict) else None
    if not isinstance(block, dict):
        return None, []
    layers = block.get("layers")
    if not isinstance(layers, list):
        return {}, [f"{MANIFEST_NAME}: its reshape block has no list of layers; heads matched by their rows"]
    out = {}
    for entry in layers[:MAX_MANIFEST_LAYERS]:
        if isinstance(entry, dict) and type(entry.get("layer")) is int:
            out[entry["layer"]] = entry
    return out, []


# ---------- the tensors a reshape sliced ----------


def _sliced(base, other, projections: dict[str, str], layer: ReshapedLayer) -> dict[str, Sliced]:
    """The layer's projections whose shape is BASE's less the removed heads (same dtype):
    those the reshape made. Any other shape change stays `retyped`."""
    dim = layer.head_dim
    out = {}
    for key, name in projections.items():
        proj, _ = key.split(".")
        b, o = base.tensors[name], other.tensors[name]
        query = proj in ("q", "o")
        before, after = layer.num_heads if query else layer.num_kv_heads
        if before is None or after is None or before == after or b.dtype != o.dtype:
            continue
        kept = layer.kept_heads if query else layer.kept_kv_heads
        axis = "cols" if proj == "o" else "rows"
        same_rest = _other_axes(b, axis) == _other_axes(o, axis)
        if same_rest and _sliced_shape(b, axis, before * dim) and _sliced_shape(o, axis, after * dim):
            out[name] = Sliced(layer, f"{proj}_proj", axis, before, kept)
    return out


def _sliced_shape(info: TensorInfo, axis: str, size: int) -> bool:
    """The head axis holds `size` elements (rows of a weight or a bias, o_proj's columns)."""
    if axis == "cols":
        return len(info.shape) == 2 and info.shape[1] == size
    return len(info.shape) in (1, 2) and info.shape[0] == size


def _other_axes(info: TensorInfo, axis: str) -> tuple[int, ...]:
    return tuple(info.shape[:1]) if axis == "cols" else tuple(info.shape[1:])
