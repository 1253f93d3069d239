"""The default `surgeon diff` report for a terminal, with rich.

Names and other strings from the checkpoints go in as `Text(inert(...))`: escaped control
characters, never parsed as markup or emoji codes (see surgeon.text).
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from surgeon.diff.engine import DiffReport, TensorDiff
from surgeon.diff.report import differing, family_rows, summary_line
from surgeon.diff.statuses import STATUS_STYLE
from surgeon.model.names import layers_cell
from surgeon.text import inert

MAX_TENSOR_ROWS = 200


def render_terminal(report: DiffReport, console: Console, verbose: bool = False) -> None:
    style = "green" if report.identical else "yellow"
    console.print(Text(inert(summary_line(report)), style=f"bold {style}"))
    console.print(Text(f"base:  {inert(report.base.source)}\nother: {inert(report.other.source)}", style="dim"))
    console.print(_families_table(report))
    console.print(_shards_table(report))
    if report.files:
        console.print(_files_table(report))
    rows = differing(report)
    if rows:
        console.print(_tensors_table(rows if verbose else rows[:MAX_TENSOR_ROWS], report.hashed))
        if len(rows) > MAX_TENSOR_ROWS and not verbose:
            console.print(Text(f"… {len(rows) - MAX_TENSOR_ROWS} more (use --verbose or --json)", style="dim"))
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


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _plain(value: object) -> Text:
    """A string from a file, as a table cell: shown as it is, never as markup."""
    return Text(inert(value))


def _families_table(report: DiffReport) -> Table:
    table = Table(title="Tensor families by layer", title_justify="left")
    table.add_column("family")
    table.add_column("layers changed")
    table.add_column("layers unchanged")
    table.add_column("statuses")
    stacks = {r.stack for r in family_rows(report) if r.stack}
    for row in family_rows(report):
        label = _plain(row.family if len(stacks) < 2 or row.stack is None else f"{row.stack}.{row.family}")
        statuses = Text(", ").join(Text(f"{n} {s}", style=STATUS_STYLE[s]) for s, n in sorted(row.statuses.items()))
        if row.stack is None:
            table.add_row(label, "", "", statuses)
        else:
            changed = layers_cell(row.layers_changed)
            table.add_row(
                label,
                Text(changed, style="yellow" if row.layers_changed else "dim"),
                Text(layers_cell(row.layers_unchanged, count_them=True)),
                statuses,
            )
    return table


def _short(sha: str | None) -> Text:
    return _plain(sha[:12] if sha else "-")


def _shards_table(report: DiffReport) -> Table:
    table = Table(title="Shard files", title_justify="left")
    for column in ("shard", "status", "base sha256", "other sha256", "tensors differing", "header"):
        table.add_column(column)
    for s in report.shards:
        table.add_row(
            _plain(s.name),
            _status(s.status),
            _short(s.sha256[0]),
            _short(s.sha256[1]),
            f"{s.tensors_differing}/{s.tensors}",
            _plain("; ".join(s.header_differences)),
        )
    return table


def _files_table(report: DiffReport) -> Table:
    table = Table(title="Other files", title_justify="left")
    for column in ("file", "status", "base sha256", "other sha256"):
        table.add_column(column)
    for f in report.files:
        table.add_row(_plain(f.name), _status(f.status), _short(f.sha256[0]), _short(f.sha256[1]))
    return table


def _tensors_table(rows: list[TensorDiff], hashed: bool) -> Table:
    table = Table(title="Tensors that differ", title_justify="left")
    for column in ("tensor", "status", "max |Δ|", "rel ‖Δ‖", "cosine", "elems Δ", "heads"):
        table.add_column(column, justify="right" if column[0] in "mrce" else "left")
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
        if t.status == "retyped" and t.base is not None and t.other is not None:  # retyped: both sides exist
            cells[0] = _plain(f"{t.base.dtype}{t.base.shape} → {t.other.dtype}{t.other.shape}")
        table.add_row(_plain(t.name), _status(t.status), *cells, _heads_cell(t))
    return table


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _heads_cell(t: TensorDiff) -> Text | str:
    if t.heads is None:
        return ""
    parts = []
    for status, style in (("zeroed", "red"), ("changed", "yellow")):
        heads = t.heads.heads_with(status)
        if heads:
            parts.append(Text(f"{status} {','.join(map(str, heads))}", style=style))
    parts.append(Text(f"of {t.heads.num_heads}×{t.heads.head_dim}", style="dim"))
    return Text(" ").join(parts)
