"""The default `surgeon diff` report for a terminal, with rich.

Names and other strings from the checkpoints go in as `Text(inert(...))`: escaped control
characters, never parsed as markup or emoji codes (see surgeon.text).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from surgeon.diff.engine import DiffReport, TensorDiff
from surgeon.diff.fold import FoldedName
from surgeon.diff.report import (
    channel_rows,
    channel_runs,
    differing,
    experts_note,
    reshape_rows,
    shown_family_rows,
    summary_line,
)
from surgeon.diff.statuses import STATUS_STYLE
from surgeon.model.names import layers_cell
from surgeon.text import inert, layer_ranges

MAX_TENSOR_ROWS = 200
# Below this width the tensors table drops its rel ‖Δ‖, cosine and elems Δ columns: at 80
# columns they left the tensor name 11 characters ("model.laye…"), and a name that cannot
# be read says nothing. Names, hashes and statuses are never cut: names fold onto more lines.
WIDE = 120
NAME: dict[str, Any] = {"overflow": "fold"}  # a name from the file: folded onto more lines, never cut
HASH: dict[str, Any] = {"no_wrap": True, "min_width": 12}  # a short SHA256 is 12 characters, all of them shown
STATUS: dict[str, Any] = {"no_wrap": True}
FAMILY_WIDTH = 36  # a narrow terminal's family column: "post_feedforward_layernorm_1.weight" whole


def render_terminal(report: DiffReport, console: Console, verbose: bool = False) -> None:
    style = "green" if report.identical else "yellow"
    console.print(Text(inert(summary_line(report)), style=f"bold {style}"))
    console.print(Text(f"base:  {inert(report.base.source)}\nother: {inert(report.other.source)}", style="dim"))
    for side, summary in (("base", report.base), ("other", report.other)):
        if summary.note:  # which weight files were read, where transformers would not read them all
            console.print(Text(f"note: {side}: {inert(summary.note)}", style="yellow"))
    wide = console.width >= WIDE
    console.print(_families_table(report, console.width))
    console.print(_shards_table(report, wide))
    if not wide:
        for line in _header_lines(report):
            console.print(line)
    if report.files:
        console.print(_files_table(report))
    rows = differing(report)
    if rows:
        shown = rows if verbose else rows[:MAX_TENSOR_ROWS]
        console.print(_tensors_table(shown, report.hashed, wide=wide))
        if len(rows) > MAX_TENSOR_ROWS and not verbose:
            console.print(Text(f"… {len(rows) - MAX_TENSOR_ROWS} more (use --verbose or --json)", style="dim"))
    if report.reshape is not None:
        _print_reshape(report, console)
    for layers, removed, width in channel_runs(channel_rows(report)):
        console.print(Text(f"MLP channels removed {removed} of {width} in {_each_layer(layers)}"))
    for t in rows:
        if t.heads and t.heads.uniform_attention:
            heads = ", ".join(map(str, t.heads.uniform_attention))
            console.print(
                Text(
                    f"warning: {inert(t.name)}: heads {heads} have zero q_proj rows but non-zero o_proj "
                    "columns; they attend uniformly and are not removed",
                    style="bold red",
                )
            )


def _each_layer(layers: list[int]) -> str:
    return f"layer {layers[0]}" if len(layers) == 1 else f"each of layers {layer_ranges(layers)}"


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _plain(value: object) -> Text:
    """A string from a file, as a table cell: shown as it is, never as markup, and folded
    between its parts (`model-00001-of-00002.` / `safetensors`) where the column is narrow."""
    return FoldedName(value)


def _families_table(report: DiffReport, width: int = WIDE) -> Table:
    """One row per tensor family. Narrow, the "layers unchanged" column goes and the family
    keeps up to FAMILY_WIDTH columns: at 80 columns the four columns shared the width evenly,
    and `experts.gate_up_proj` folded after 17 characters (never more than half the width)."""
    table = Table(title="Tensor families by layer", title_justify="left")
    rows = shown_family_rows(report)  # a mixture-of-experts family is one row, not one per expert
    stacks = {r.stack for r in rows if r.stack}
    labels = [row.family if len(stacks) < 2 or row.stack is None else f"{row.stack}.{row.family}" for row in rows]
    wide = width >= WIDE
    # A fixed width, not min_width: with min_width rich cropped the last column by one character.
    family_width = (
        None if wide else max(8, min(max((len(label) for label in labels), default=0), FAMILY_WIDTH, width // 2))
    )
    table.add_column("family", **NAME, width=family_width)
    table.add_column("layers changed")
    if wide:
        table.add_column("layers unchanged")
    table.add_column("statuses")
    for row, label in zip(rows, labels, strict=True):
        statuses = Text(", ").join(Text(f"{n} {s}", style=STATUS_STYLE[s]) for s, n in sorted(row.statuses.items()))
        if row.stack is None:
            cells = [Text(""), Text("")]
        else:
            changed = experts_note(row) or layers_cell(row.layers_changed)
            cells = [
                Text(changed, style="yellow" if row.layers_changed else "dim"),
                Text(layers_cell(row.layers_unchanged, count_them=True)),
            ]
        table.add_row(_plain(label), *(cells if wide else cells[:1]), statuses)
    return table


def _short(sha: str | None) -> Text:
    return _plain(sha[:12] if sha else "-")


def _shards_table(report: DiffReport, wide: bool = True) -> Table:
    """One row per shard file. Narrow, the header differences go under the table (see
    _header_lines), so that the shard's name keeps room to be read."""
    table = Table(title="Shard files", title_justify="left")
    table.add_column("shard", **NAME, min_width=min(20, max((len(s.label) for s in report.shards), default=5)))
    table.add_column("status", **STATUS)
    table.add_column("base sha256", **HASH)
    table.add_column("other sha256", **HASH)
    table.add_column("tensors differing" if wide else "differ", no_wrap=True)
    if wide:
        table.add_column("header", **NAME)
    for s in report.shards:
        header = [_plain("; ".join(s.header_differences))] if wide else []
        table.add_row(
            _plain(s.label),
            _status(s.status),
            _short(s.sha256[0]),
            _short(s.sha256[1]),
            f"{s.tensors_differing}/{s.tensors}",
            *header,
        )
    return table


def _header_lines(report: DiffReport) -> list[Text]:
    """`shard: header difference`, one line per shard whose header differs (narrow terminals)."""
    return [_plain(f"{s.label}: {'; '.join(s.header_differences)}") for s in report.shards if s.header_differences]


def _files_table(report: DiffReport) -> Table:
    table = Table(title="Other files", title_justify="left")
    table.add_column("file", **NAME)
    table.add_column("status", **STATUS)
    table.add_column("base sha256", **HASH)
    table.add_column("other sha256", **HASH)
    for f in report.files:
        table.add_row(_plain(f.name), _status(f.status), _short(f.sha256[0]), _short(f.sha256[1]))
    return table


def _tensors_table(rows: list[TensorDiff], hashed: bool, wide: bool = True) -> Table:
    table = Table(title="Tensors that differ", title_justify="left")
    table.add_column("tensor", **NAME)
    table.add_column("status", **STATUS)
    columns = ("max |Δ|", "rel ‖Δ‖", "cosine", "elems Δ") if wide else ("max |Δ|",)
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("heads")
    for t in rows:
        stats = t.stats
        cells: list[Text | str] = ["", "", "", ""]
        if stats is not None:
            cells = [
                _num(stats.max_abs_delta),
                _num(stats.rel_frobenius),
                _num(stats.cosine, ".6f"),
                f"{stats.frac_changed:.1%}",
            ]
        if t.base is not None and t.other is not None and t.base.shape != t.other.shape and stats is None:
            cells[0] = _plain(
                f"{t.base.shape} → {t.other.shape}"
            )  # no stats across shapes (a reshape's are of its kept heads)
        table.add_row(_plain(t.name), _status_cell(t), *cells[: len(columns)], _heads_cell(t))
    return table


def _status_cell(t: TensorDiff) -> Text:
    """`retyped BF16→F16`: the stats of a retyped tensor compare decoded values, so the
    dtypes they came from go beside the status."""
    cell = _status(t.status)
    if t.status == "retyped" and t.base is not None and t.other is not None and t.base.dtype != t.other.dtype:
        cell.append(Text(f" {inert(t.base.dtype)}→{inert(t.other.dtype)}", style="dim"))
    return cell


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _heads_cell(t: TensorDiff) -> Text | str:
    experts = t.stats.experts_changed if t.stats is not None else None
    if experts is not None and t.base is not None:  # a fused experts tensor: which slices differ
        if not experts:  # retyped with every value kept
            return Text(f"0 of {t.base.shape[0]} experts", style="dim")
        word = "expert" if len(experts) == 1 else "experts"
        return Text(f"{word} {layer_ranges(experts)}", style="yellow") + Text(f" of {t.base.shape[0]}", style="dim")
    if t.channels is not None:  # an MLP projection: how many channels, never a list of thousands
        for status in ("removed", "zeroed"):
            count = len(t.channels.heads_with(status))
            if count:
                return Text(f"{status} {count}", style="red") + Text(
                    f" of {t.channels.num_heads} channels", style="dim"
                )
    if t.heads is None:
        return ""
    parts = []
    for status, style in (("removed", "red"), ("zeroed", "red"), ("changed", "yellow")):
        heads = t.heads.heads_with(status)
        if heads:
            parts.append(Text(f"{status} {','.join(map(str, heads))}", style=style))
    parts.append(Text(f"of {t.heads.num_heads}×{t.heads.head_dim}", style="dim"))
    return Text(" ").join(parts)


def _print_reshape(report: DiffReport, console: Console) -> None:
    """A row per reshaped layer: the heads that went, and the kept heads against BASE's.
    The columns fit 80: no name from a file is in them, only numbers and surgeon's words."""
    assert report.reshape is not None  # the caller checked
    where = "prune_manifest.json" if report.reshape.manifest else "matched by their q/k rows"
    table = Table(title=f"Reshaped attention (heads: {where})", title_justify="left")
    for column in ("layer", "heads", "removed", "KV heads", "KV removed"):
        table.add_column(column, no_wrap=True)
    table.add_column("kept q/k/v")
    table.add_column("kept o_proj")
    for row in reshape_rows(report):
        kept_style = "green" if row.kept == "identical" else "yellow"
        table.add_row(
            str(row.layer),
            row.heads,
            Text(row.removed, style="red"),
            row.kv_heads,
            Text(row.kv_removed, style="red" if row.kv_removed not in ("none", "") else "dim"),
            Text(row.kept, style=kept_style),
            Text(row.o_proj, style="yellow" if row.o_proj == "changed" else ""),
        )
    console.print(table)
    notes = [*report.reshape.notes, *(f"layer {r.layer}: {r.note}" for r in reshape_rows(report) if r.note)]
    for note in notes:
        console.print(Text(f"note: {inert(note)}", style="yellow"))
