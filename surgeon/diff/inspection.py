"""`surgeon inspect`: what a checkpoint holds, from its headers alone (no tensor data read)."""

from __future__ import annotations

from dataclasses import dataclass

from surgeon.format.checkpoint import Checkpoint
from surgeon.model.geometry import geometry_by_layer
from surgeon.model.names import parse_name
from surgeon.text import layer_ranges

SCHEMA = "surgeon.inspect/1"


@dataclass
class FamilyCount:
    stack: str | None
    family: str
    tensors: int
    parameters: int
    bytes: int
    dtypes: list[str]
    layers: list[int]


def family_counts(ckpt: Checkpoint) -> list[FamilyCount]:
    rows: dict[tuple, FamilyCount] = {}
    for name, info in ckpt.tensors.items():
        parsed = parse_name(name)
        row = rows.setdefault((parsed.stack, parsed.family), FamilyCount(parsed.stack, parsed.family, 0, 0, 0, [], []))
        row.tensors += 1
        row.parameters += info.numel
        row.bytes += info.nbytes
        if info.dtype.name not in row.dtypes:
            row.dtypes.append(info.dtype.name)
        if parsed.layer is not None:
            row.layers.append(parsed.layer)
    for row in rows.values():
        row.layers.sort()
    return list(rows.values())


def inspect_json(ckpt: Checkpoint) -> dict:
    geometry = geometry_by_layer(ckpt.config, ckpt.tensors)
    return {
        "schema": SCHEMA,
        "source": ckpt.source,
        "path": str(ckpt.root),
        "revision": ckpt.revision,
        "index": ckpt.index_name,
        "index_metadata": ckpt.metadata,
        "ignored": ckpt.ignored,
        "note": ckpt.note,
        "model_type": (ckpt.config or {}).get("model_type"),
        "architectures": (ckpt.config or {}).get("architectures"),
        "parameters": sum(t.numel for t in ckpt.tensors.values()),
        "bytes": ckpt.total_bytes,
        "shards": [
            {
                "name": s.name,
                "size": s.file_size,
                "header_len": s.header_len,
                "tensors": len(s.tensors),
                "metadata": s.metadata,
            }
            for s in ckpt.shards.values()
        ],
        "families": [vars(row) for row in family_counts(ckpt)],
        "attention": [
            {
                "stack": stack,
                "layer": layer,
                "num_heads": g.num_heads,
                "head_dim": g.head_dim,
                "num_kv_heads": g.num_kv_heads,
                "layer_type": g.layer_type,
                "source": g.source,
            }
            for (stack, layer), g in sorted(geometry.items())
        ],
        "tensors": [
            {
                "name": t.name,
                "dtype": t.dtype.name,
                "shape": list(t.shape),
                "shard": t.file,
                "data_offsets": [t.start, t.end],
            }
            for t in ckpt.tensors.values()
        ],
    }


def attention_summary(data: dict) -> list[str]:
    """Lines like 'layers 0-4, 6: 8 heads x 8, 4 kv heads (sliding_attention)'."""
    groups: dict[tuple, list[int]] = {}
    for row in data["attention"]:
        key = (row["stack"], row["num_heads"], row["head_dim"], row["num_kv_heads"], row["layer_type"])
        groups.setdefault(key, []).append(row["layer"])
    lines = []
    for (stack, heads, dim, kv, kind), layers in groups.items():
        kind_text = f" ({kind})" if kind else ""
        lines.append(f"{stack} {layer_ranges(layers)}: {heads} heads x {dim}, {kv} kv heads{kind_text}")
    return lines
