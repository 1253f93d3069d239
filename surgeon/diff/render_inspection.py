"""The `surgeon inspect` report for a terminal, with rich.

Every string from the checkpoint (names, metadata, config values) goes in as
`Text(inert(...))`: escaped control characters, never parsed as markup (see surgeon.text).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from surgeon.diff.engine import natural_key
from surgeon.diff.fold import FoldedName
from surgeon.diff.inspection import attention_summary
from surgeon.model.names import layers_cell
from surgeon.text import inert


def _plain(value: object) -> Text:
    return FoldedName(value)  # inert, and folded between a name's parts in a narrow column


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def render_inspect(data: dict, console: Console, verbose: bool = False) -> None:
    kind = data["model_type"] or "unknown model type"
    head = Text(inert(data["source"]), style="bold")
    head.append(
        f": {inert(kind)}, {data['parameters']:,} parameters, "
        f"{len(data['tensors'])} tensors, {len(data['shards'])} shard(s), {_size(data['bytes'])}"
    )
    console.print(head)
    if data["note"]:
        console.print(Text(f"  note: {inert(data['note'])}", style="yellow"))
    for line in attention_summary(data):
        console.print(_plain(f"  attention {line}"))
    shards = Table(title="Shards", title_justify="left")
    for column in ("file", "size", "tensors", "header", "__metadata__"):
        shards.add_column(column)
    for s in data["shards"]:
        meta = ", ".join(f"{k}={v[:40]}" for k, v in (s["metadata"] or {}).items())
        shards.add_row(_plain(s["name"]), _size(s["size"]), str(s["tensors"]), f"{s['header_len']} B", _plain(meta))
    console.print(shards)
    families = Table(title="Parameters by family", title_justify="left")
    for column in ("family", "layers", "tensors", "parameters", "size", "dtype"):
        families.add_column(column, justify="right" if column in ("tensors", "parameters", "size") else "left")
    for f in data["families"]:
        layers = layers_cell(f["layers"]) if f["stack"] else ""
        families.add_row(
            _plain(f["family"]),
            layers,
            str(f["tensors"]),
            f"{f['parameters']:,}",
            _size(f["bytes"]),
            _plain(",".join(f["dtypes"])),
        )
    console.print(families)
    if verbose:
        tensors = Table(title="Tensors", title_justify="left")
        for column in ("tensor", "dtype", "shape", "shard"):
            tensors.add_column(column)
        for t in sorted(data["tensors"], key=lambda t: natural_key(t["name"])):  # JSON keeps the shards' order
            tensors.add_row(_plain(t["name"]), _plain(t["dtype"]), str(t["shape"]), _plain(t["shard"]))
        console.print(tensors)
