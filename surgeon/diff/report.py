"""Views of a DiffReport shared by every output: family rows, summary words, the JSON form.

JSON schema `surgeon.diff/1` is documented in docs/diff-json.md; fields are only ever
added within a schema version, never renamed or removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from surgeon.diff.engine import DiffReport, HeadReport, TensorDiff
from surgeon.diff.reshape import ReshapeFindings
from surgeon.diff.statuses import SHARD_STATUSES, STATUSES, status_counts
from surgeon.model.names import expert_family, fused_experts, layers_phrase
from surgeon.text import layer_ranges

SCHEMA = "surgeon.diff/1"


@dataclass
class FamilyRow:
    stack: str | None
    family: str
    layers_changed: list[int]
    layers_unchanged: list[int]
    statuses: dict[str, int]

    @property
    def changed(self) -> bool:
        return any(n for status, n in self.statuses.items() if status != "identical")


def family_rows(report: DiffReport) -> list[FamilyRow]:
    """One row per (layer stack, family), plus one per tensor outside any stack."""
    rows: dict[tuple[str | None, str], FamilyRow] = {}
    for t in report.tensors:
        row = rows.setdefault((t.stack, t.family), FamilyRow(t.stack, t.family, [], [], {}))
        row.statuses[t.status] = row.statuses.get(t.status, 0) + 1
        if t.layer is not None:
            (row.layers_unchanged if t.status == "identical" else row.layers_changed).append(t.layer)
    return list(rows.values())


@dataclass
class ExpertsRow(FamilyRow):
    """The experts of one mixture-of-experts family collapsed into one row, as layers are:
    "mlp.experts.{0-127}.up_proj.weight" rather than 128 rows. A layer is changed when any of
    its experts is; `changed_experts` says which (layer -> experts).

    A fused family ("experts.gate_up_proj", all experts in one tensor per layer: Gemma 4) is
    one row already; its `changed_experts` come from the stats pass, which compared every
    expert's slice, so a changed layer the pass did not compare (--no-stats, an added or
    reshaped tensor) is in layers_changed with no experts named, and `experts` stays empty."""

    experts: list[int] = field(default_factory=list)
    changed_experts: dict[int, list[int]] = field(default_factory=dict)


def shown_family_rows(report: DiffReport) -> list[FamilyRow]:
    """family_rows with each mixture-of-experts family's experts collapsed into one row (for
    the terminal and the Markdown card; the JSON keeps a row per expert)."""
    out: list[FamilyRow] = []
    collapsed: dict[tuple[str | None, str, str], ExpertsRow] = {}
    fused = _fused_changes(report)
    for row in family_rows(report):
        if (row.stack, row.family) in fused:
            out.append(ExpertsRow(**vars(row), changed_experts=fused[row.stack, row.family]))
            continue
        split = expert_family(row.family) if row.stack is not None else None
        if split is None:
            out.append(row)
            continue
        head, tail, expert = split
        key = (row.stack, head, tail)
        if key not in collapsed:
            collapsed[key] = ExpertsRow(row.stack, "", [], [], {})
            out.append(collapsed[key])
        merged = collapsed[key]
        merged.experts.append(expert)
        for status, n in row.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
        for layer in row.layers_changed:
            merged.changed_experts.setdefault(layer, []).append(expert)
        merged.layers_unchanged.extend(row.layers_unchanged)
    for (_, head, tail), merged in collapsed.items():
        merged.family = f"{head}{{{layer_ranges(merged.experts).replace(' ', '')}}}{tail}"
        merged.layers_changed = sorted(merged.changed_experts)
        merged.layers_unchanged = sorted(set(merged.layers_unchanged) - set(merged.changed_experts))
        merged.changed_experts = {layer: sorted(set(e)) for layer, e in sorted(merged.changed_experts.items())}
    return out


def _fused_changes(report: DiffReport) -> dict[tuple[str | None, str], dict[int, list[int]]]:
    """(stack, family) of each fused experts family -> {layer: the experts whose slice the
    stats pass found different}; layers it did not compare are left out."""
    found: dict[tuple[str | None, str], dict[int, list[int]]] = {}
    for t in report.tensors:
        side = t.base or t.other
        if t.stack is None or t.layer is None or side is None or fused_experts(t.family, side.shape) is None:
            continue
        changes = found.setdefault((t.stack, t.family), {})
        if t.stats is not None and t.stats.experts_changed:
            changes[t.layer] = t.stats.experts_changed
    return found


def experts_note(row: FamilyRow, limit: int = 4) -> str:
    """ "5 (experts 3, 17); 7 (experts 0-2)" for an experts row's changed layers, the first
    `limit` layers named (a layer whose experts were not compared is its number alone); ""
    for any other row, or when no layer names its experts."""
    if not isinstance(row, ExpertsRow) or not row.changed_experts:
        return ""
    parts = [_layer_experts(layer, row.changed_experts.get(layer)) for layer in row.layers_changed[:limit]]
    more = len(row.layers_changed) - limit
    return "; ".join(parts) + (f"; and {more} more layers" if more > 0 else "")


def _layer_experts(layer: int, experts: list[int] | None) -> str:
    if not experts:
        return str(layer)
    return f"{layer} ({'expert' if len(experts) == 1 else 'experts'} {layer_ranges(experts)})"


def differing(report: DiffReport) -> list[TensorDiff]:
    return [t for t in report.tensors if t.status != "identical"]


def summary_line(report: DiffReport) -> str:
    total = len(report.tensors)
    diff = differing(report)
    if report.identical:
        return f"identical: all {total} tensors and {len(report.shards)} shard files match"
    counts = ", ".join(f"{report.count(s)} {s}" for s in STATUSES[1:] if report.count(s))
    text = f"{len(diff)} of {total} tensors differ" + (f" ({counts})" if counts else "")
    layers = report.layers_changed()
    if layers:
        text += f" in {layers_phrase(layers)}"  # "in layer 5", "in layers 0-3"
    shard_counts = [f"{n} {s}" for s in SHARD_STATUSES if (n := _shard_count(report, s)) and s != "identical"]
    if shard_counts:
        text += f"; shards: {', '.join(shard_counts)} of {len(report.shards)}"
    files = [f"{f.name} {f.status}" for f in report.files if f.status != "identical"]
    if files:
        text += f"; files: {', '.join(files)}"
    return text


def _shard_count(report: DiffReport, status: str) -> int:
    return sum(1 for s in report.shards if s.status == status)


def uniform_attention(report: DiffReport) -> list[dict]:
    return [
        {"tensor": t.name, "layer": t.layer, "heads": t.heads.uniform_attention}
        for t in report.tensors
        if t.heads is not None and t.heads.uniform_attention
    ]


def to_json(report: DiffReport) -> dict:
    layers = report.layers_changed()
    changed = set(layers)
    out: dict = {
        "schema": SCHEMA,
        "base": asdict(report.base),
        "other": asdict(report.other),
        "hashed": report.hashed,
        "summary": {
            "identical": report.identical,
            "text": summary_line(report),
            "tensors": {"total": len(report.tensors)} | status_counts([t.status for t in report.tensors]),
            "shards": {"total": len(report.shards)} | {s: _shard_count(report, s) for s in SHARD_STATUSES},
            "layer_stack": report.main_stack,
            "num_layers": report.num_layers,
            "layers_changed": layers,
            "layers_unchanged": [n for n in report.layer_numbers() if n not in changed],
            "uniform_attention": uniform_attention(report),
        },
        "families": [asdict(row) for row in family_rows(report)],
        "shards": [asdict(s) for s in report.shards],
        "files": [asdict(f) for f in report.files],
        "tensors": [_tensor_json(t) for t in report.tensors],
    }
    if report.reshape is not None:  # only for a reshaped pair: every other pair's JSON is as it was
        out["reshape"] = reshape_json(report.reshape)
    channels = channel_rows(report)
    if channels:  # only where MLP channels were removed: every other pair's JSON is as it was
        out["summary"]["ffn_channels_removed"] = [asdict(row) for row in channels]
    return out


@dataclass
class ChannelRow:
    """One layer whose MLP lost channels: down_proj columns all zero in OTHER and not in BASE
    (the channel's output is gone, whatever its gate and up rows hold)."""

    stack: str | None
    layer: int
    width: int
    removed: list[int]
    rows_kept: list[int]  # removed channels whose gate_proj or up_proj row is not zero
    sliced: bool  # reshaped: the channels are gone from the shapes, not zeroed


def channel_rows(report: DiffReport) -> list[ChannelRow]:
    found: dict[tuple, dict[str, HeadReport]] = {}
    for t in report.tensors:
        if t.channels is not None and t.layer is not None:
            found.setdefault((t.stack, t.layer), {})[t.channels.projection] = t.channels
    rows = []
    for (stack, layer), by_proj in sorted(found.items(), key=lambda item: (item[0][0] or "", item[0][1])):
        down = by_proj.get("down_proj")
        sliced = down.heads_with("removed") if down is not None else []
        removed = sorted(sliced + down.heads_with("zeroed")) if down is not None else []
        if down is None or not removed:
            continue
        gate_up = [by_proj[p] for p in ("gate_proj", "up_proj") if p in by_proj]
        live = [c for c in removed if any(c < r.num_heads and _live(r, c) for r in gate_up)]
        rows.append(ChannelRow(stack, layer, down.num_heads, removed, live, bool(sliced)))
    return rows


def _live(report: HeadReport, channel: int) -> bool:
    """The channel's gate or up row is there and not all zero."""
    return report.statuses[channel] != "removed" and not report.other_zero[channel]


def channel_runs(rows: list[ChannelRow]) -> list[tuple[list[int], int, int]]:
    """(layers, channels removed, width) for each run of layers that removed alike, for text."""
    runs: list[tuple[list[int], int, int]] = []
    for row in rows:
        if runs and (runs[-1][1], runs[-1][2]) == (len(row.removed), row.width):
            runs[-1][0].append(row.layer)
        else:
            runs.append(([row.layer], len(row.removed), row.width))
    return runs


def reshape_json(found: ReshapeFindings) -> dict:
    return {
        "manifest": found.manifest,
        "notes": found.notes,
        "layers": [
            {
                "stack": layer.stack,
                "layer": layer.layer,
                "source": layer.source,
                "head_dim": layer.head_dim,
                "num_heads": layer.num_heads,
                "num_kv_heads": layer.num_kv_heads,
                "removed_heads": layer.removed_heads,
                "kept_heads": layer.kept_heads,
                "removed_kv_heads": layer.removed_kv_heads,
                "kept_kv_heads": layer.kept_kv_heads,
                "note": layer.note,
            }
            for layer in found.layers
        ],
    }


def _tensor_json(t: TensorDiff) -> dict:
    sides = (t.base, t.other)
    return {
        "name": t.name,
        "status": t.status,
        "stack": t.stack,
        "layer": t.layer,
        "family": t.family,
        "sha256": [s.sha256 if s else None for s in sides],
        "dtype": [s.dtype if s else None for s in sides],
        "shape": [s.shape if s else None for s in sides],
        "shard": [s.shard if s else None for s in sides],
        "stats": asdict(t.stats) if t.stats else None,
        "heads": _heads_json(t.heads) if t.heads else None,
    } | ({"channels": _channels_json(t.channels)} if t.channels else {})  # an MLP projection's only


def _channels_json(c: HeadReport) -> dict:
    return {
        "projection": c.projection,
        "axis": c.axis,
        "num_channels": c.num_heads,
        "zeroed": c.heads_with("zeroed"),
        "changed": len(c.heads_with("changed")),
        "all_zero": [i for i, z in enumerate(c.other_zero) if z],
    } | ({"removed": c.heads_with("removed")} if "removed" in c.statuses else {})  # a reshaped tensor only


def _heads_json(h: HeadReport) -> dict:
    return {
        "projection": h.projection,
        "axis": h.axis,
        "num_heads": h.num_heads,
        "head_dim": h.head_dim,
        "statuses": h.statuses,
        "zeroed": h.heads_with("zeroed"),
        "changed": h.heads_with("changed"),
        "unchanged": h.heads_with("unchanged"),
        "all_zero": [i for i, z in enumerate(h.other_zero) if z],
        "uniform_attention": h.uniform_attention,
    } | ({"removed": h.heads_with("removed")} if "removed" in h.statuses else {})  # a reshaped tensor only


@dataclass
class ReshapeRow:
    """One reshaped layer as the terminal and the card show it."""

    layer: int
    heads: str  # "8 → 6"
    removed: str  # "0, 1"; "?" where not established
    kv_heads: str  # "4 → 3"; "" without a k_proj
    kv_removed: str  # "0"; "none"; "?"
    kept: str  # the kept heads' q/k/v rows against BASE's: "identical", "q changed 3", "not compared"
    o_proj: str  # the kept heads' o_proj columns: "changed", "identical", "not compared"
    note: str | None


def reshape_rows(report: DiffReport) -> list[ReshapeRow]:
    if report.reshape is None:
        return []
    by_layer: dict[tuple[str, int], list[TensorDiff]] = {}
    for t in report.tensors:
        attention = not t.family.startswith("mlp.")  # a sliced MLP's channels have rows of their own
        if t.status == "reshaped" and attention and t.stack is not None and t.layer is not None:
            by_layer.setdefault((t.stack, t.layer), []).append(t)
    rows = []
    for layer in report.reshape.layers:
        sliced = by_layer.get((layer.stack, layer.layer), [])
        kv_before, kv_after = layer.num_kv_heads
        rows.append(
            ReshapeRow(
                layer.layer,
                f"{layer.num_heads[0]} → {layer.num_heads[1]}",
                _heads_list(layer.removed_heads),
                "" if kv_before is None else f"{kv_before} → {kv_after}",
                "" if kv_before is None else _heads_list(layer.removed_kv_heads),
                _kept_rows([t for t in sliced if not _is_o(t)], by_projection=True),
                _kept_rows([t for t in sliced if _is_o(t)], by_projection=False),
                layer.note,
            )
        )
    return rows


def _heads_list(heads: list[int] | None) -> str:
    if heads is None:
        return "?"
    return ", ".join(map(str, heads)) if heads else "none"


def _is_o(t: TensorDiff) -> bool:
    return t.family.endswith("o_proj.weight")


def _kept_rows(tensors: list[TensorDiff], by_projection: bool) -> str:
    """What the kept heads of these tensors are against BASE's: `identical`, `changed`
    (o_proj), or the q/k/v heads that changed (`q changed 3`)."""
    if not tensors:
        return "-"
    if any(t.heads is None for t in tensors):
        return "not compared"
    parts = []
    for t in tensors:
        assert t.heads is not None  # checked above
        moved = t.heads.heads_with("changed") + t.heads.heads_with("zeroed")
        if moved:
            label = f"{t.heads.projection[0]} changed {layer_ranges(sorted(moved))}" if by_projection else "changed"
            parts.append(label)
    return "; ".join(dict.fromkeys(parts)) if parts else "identical"
