"""A checkpoint against its quant, for people: the terminal report (rich) and the model card's
"Quantized from" section (Markdown).

As in the safetensors reports, every string from a file (tensor names, the GGUF's name, the
reasons that quote them) goes in as `Text(inert(...))` on the terminal and through md_code /
md_text in the card: never markup, never a new table cell or line.
"""

from __future__ import annotations

import textwrap

from rich.console import Console
from rich.table import Table
from rich.text import Text

from surgeon.diff.fold import FoldedName
from surgeon.diff.quant_report import (
    VERDICT_STYLE,
    QuantFamily,
    QuantReport,
    QuantTensor,
    family_rows,
    storage_counts,
    summary_line,
)
from surgeon.diff.render_terminal import NAME, STATUS
from surgeon.model.names import layers_cell
from surgeon.text import inert, md_code, md_text

MAX_TENSOR_ROWS = 200
HEADS_SHOWN = 3  # heads named in a cell; --json lists them all
SUMMARY_WIDTH = 80  # the summary line wraps here, the narrowest terminal surgeon lays out for
FAMILY_WIDTH = 32  # "post_attention_layernorm.weight" whole, and the table still fits 80 columns


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return "0" if value == 0 else format(value, ".2g")


def nmse_cell(t: QuantTensor | None) -> str:
    if t is None:
        return ""
    if t.nmse is None and t.verdict == "differs":
        return "base zero" if t.note and t.note.startswith("base all zero") else "NaN"
    return _num(t.nmse)


def bound_cell(t: QuantTensor | None) -> str:
    if t is None or t.verdict not in ("within", "differs", "unverified"):
        return ""
    return "none" if t.bound is None else _num(t.bound)


def counted_phrase(kind: str, n: int) -> str:
    return f"{kind} ({n} tensor{'s' if n > 1 else ''})"


def size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# Terminal


def render_quant_terminal(report: QuantReport, console: Console, verbose: bool = False) -> None:
    style = "green" if report.made_from else "yellow"
    # wrapped at word breaks to 80 columns, whatever the console's width (a pipe's is 160):
    # every fact kept, none past the edge of a terminal
    summary = textwrap.fill(inert(summary_line(report)), width=min(console.width, SUMMARY_WIDTH))
    console.print(Text(summary, style=f"bold {style}"))
    parts = f"{report.other.shards} file{'s' if report.other.shards > 1 else ''}, {size_text(report.other.bytes)}"
    sides = f"base:  {inert(report.base.source)}\nquant: {inert(report.other.source)} ({quant_kind(report)}, {parts})"
    console.print(Text(sides, style="dim"))
    if report.transforms:
        undone = ", ".join(counted_phrase(inert(kind), n) for kind, n in report.transforms.items())
        console.print(Text(f"undone: {undone}", style="dim"))
    console.print(_families_table(report, console.width))
    shown = [t for t in report.tensors if verbose or t.verdict in ("differs", "shape-mismatch")]
    if shown:
        title = "Tensors" if verbose else "Tensors beyond their bounds"
        console.print(_tensors_table(shown[: None if verbose else MAX_TENSOR_ROWS], title))
        if len(shown) > MAX_TENSOR_ROWS and not verbose:
            console.print(Text(f"… {len(shown) - MAX_TENSOR_ROWS} more (use --verbose or --json)", style="dim"))
    for line in _unverified_lines(report, verbose):
        console.print(line)
    unmatched = [t for t in report.tensors if t.verdict in ("base-only", "quant-only")]
    if unmatched:
        console.print(_unmatched_table(unmatched))


def quant_kind(report: QuantReport) -> str:
    """`GGUF llama`, or `modelopt NVFP4 safetensors, llama`: what the quant is stored as."""
    arch = inert(report.architecture)
    return f"GGUF {arch}" if report.format == "gguf" else f"{inert(report.scheme or '')} safetensors, {arch}"


def _families_table(report: QuantReport, width: int) -> Table:
    table = Table(title="Tensor families by layer", title_justify="left")
    rows = family_rows(report)
    stacks = {r.stack for r in rows if r.stack}
    labels = [r.family if len(stacks) < 2 or r.stack is None else f"{r.stack}.{r.family}" for r in rows]
    family_width = max(8, min(max((len(label) for label in labels), default=0), FAMILY_WIDTH, width // 2))
    table.add_column("family", **NAME, width=family_width)
    table.add_column("type", **NAME)
    table.add_column("NMSE", justify="right", no_wrap=True)
    table.add_column("bound", justify="right", no_wrap=True)
    table.add_column("beyond in", **NAME)
    for row, label in zip(rows, labels, strict=True):
        table.add_row(FoldedName(label), FoldedName("+".join(row.storage) or "-"), *family_cells(row))
    return table


def family_cells(row: QuantFamily) -> list[Text | str]:
    worst = row.worst
    cells: list[Text | str] = [nmse_cell(worst), bound_cell(worst)]
    if row.layers_changed:
        cells.append(Text(layers_cell(row.layers_changed), style="yellow"))
    elif row.stack is None:
        verdict = next(iter(row.verdicts))
        cells.append(Text("" if verdict == "within" else verdict, style=VERDICT_STYLE[verdict]))
    elif row.verdicts.get("unverified"):
        cells.append(Text("unverified", style=VERDICT_STYLE["unverified"]))
    else:
        cells.append(Text("(none)", style="dim"))
    return cells


def _tensors_table(rows: list[QuantTensor], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("tensor", **NAME)
    table.add_column("type", **STATUS)
    table.add_column("NMSE", justify="right", no_wrap=True)
    table.add_column("bound", justify="right", no_wrap=True)
    table.add_column("heads beyond")
    for t in rows:
        table.add_row(FoldedName(t.name), Text(inert(t.storage or "-")), nmse_cell(t), bound_cell(t), _heads_cell(t))
    return table


def _heads_cell(t: QuantTensor) -> Text:
    if t.verdict == "shape-mismatch":
        return Text(inert(t.note or "shape mismatch"), style="red")
    if t.heads is None or not t.heads.beyond:
        return Text("")
    # the furthest first, three at most: a removed head (1.0) before healed ones (~0.1)
    order = sorted(t.heads.beyond, key=lambda h: -_sort_value(t.heads.nmse[h]) if t.heads else 0)
    values = ", ".join(f"{h} ({_head_value(t.heads.nmse[h])})" for h in order[:HEADS_SHOWN])
    more = f" +{len(order) - HEADS_SHOWN} more" if len(order) > HEADS_SHOWN else ""
    return Text(values + more, style="yellow") + Text(f" of {t.heads.num_heads}", style="dim")


def _sort_value(value: float | None) -> float:
    return float("inf") if value is None else value


def _head_value(value: float | None) -> str:
    return "base zero" if value is None else _num(value)


def _unverified_lines(report: QuantReport, verbose: bool) -> list[Text]:
    unverified = [t for t in report.tensors if t.verdict == "unverified"]
    if not unverified:
        return []
    types = ", ".join(dict.fromkeys(inert(t.storage or "?") for t in unverified))
    more = "" if verbose else "; --verbose lists them"
    line = f"unverified: {len(unverified)} tensors in {types}, with no measured bound{more}"
    # no bound to judge it by, but the largest NMSE still says where to look (1.0: a zeroed tensor)
    largest = max(unverified, key=lambda t: _sort_value(t.nmse))
    line += f"; the largest NMSE is {nmse_cell(largest)}, in {inert(largest.name)}"
    return [Text(line, style=VERDICT_STYLE["unverified"])]


def _unmatched_table(rows: list[QuantTensor]) -> Table:
    table = Table(title="Not compared", title_justify="left")
    table.add_column("tensor", **NAME)
    table.add_column("where", **STATUS)
    table.add_column("why", **NAME)
    for t in rows:
        where = {"base-only": "base only", "quant-only": "quant only"}[t.verdict]
        style = VERDICT_STYLE[t.verdict] if t.counts else "dim"
        table.add_row(FoldedName(t.name), Text(where, style=style), Text(inert(t.note or "")))
    return table


# ---------------------------------------------------------------------------------------------
# Markdown


def render_quant_markdown(report: QuantReport, more: list[str] | None = None) -> str:
    base, quant = md_code(report.base.name, table=False), md_code(report.other.name, table=False)
    files = f"{report.other.shards} file{'s' if report.other.shards > 1 else ''}"
    kind = "GGUF" if report.format == "gguf" else f"safetensors, {md_text(report.scheme or '')}"
    undone = ", llama.cpp's layout transforms undone," if report.format == "gguf" else ""
    lines = [
        "## Quantized from",
        "",
        f"{quant} ({kind}, {md_text(report.architecture)}, {files}) compared with {base} by `surgeon diff`: "
        f"every tensor dequantized{undone} and its NMSE against the base "
        "(sum((q - b)^2) / sum(b^2)) held to the bound measured for its storage type.",
        "",
        _verdict_sentence(report),
        "",
        "| Type | Tensors | Within | Worst NMSE | Bound |",
        "|---|---|---|---|---|",
        *_type_rows(report),
    ]
    if report.transforms:
        undone = ", ".join(counted_phrase(md_code(kind, table=False), n) for kind, n in report.transforms.items())
        lines += ["", f"Transforms undone: {undone}."]
    lines += _differing_md(report)
    lines += _unmatched_md(report)
    lines += _hashes_md(report)
    if more:
        lines += ["", *more]
    return "\n".join(lines) + "\n"


def _verdict_sentence(report: QuantReport) -> str:
    base = md_code(report.base.name, table=False)
    counted = report.counted
    if report.made_from:
        return f"**Made from {base}**: {len(counted)} of {len(counted)} tensors within their bounds."
    return f"**Not shown to be made from {base}**: {md_text(summary_line(report))}."


def _type_rows(report: QuantReport) -> list[str]:
    rows = []
    for storage in storage_counts(report):
        tensors = [t for t in report.tensors if t.storage == storage]
        within = sum(1 for t in tensors if t.verdict == "within")
        worst = max((t.nmse for t in tensors if t.nmse is not None), default=None)
        bounds = [t.bound for t in tensors]
        bound_text = "none measured" if None in bounds else _num(max(b for b in bounds if b is not None))
        rows.append(f"| {md_code(storage)} | {len(tensors)} | {within} | {_num(worst)} | {bound_text} |")
    return rows


def _differing_md(report: QuantReport) -> list[str]:
    rows = [t for t in report.tensors if t.verdict in ("differs", "shape-mismatch")]
    if not rows:
        return []
    lines = ["", "Tensors beyond their bounds:", "", "| Tensor | Type | NMSE | Bound | Heads beyond |"]
    lines.append("|---|---|---|---|---|")
    for t in rows[:MAX_TENSOR_ROWS]:
        cells = [
            md_code(t.name),
            md_code(t.storage or "-"),
            nmse_cell(t),
            bound_cell(t),
            md_text(_heads_cell(t).plain),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > MAX_TENSOR_ROWS:
        lines += ["", f"And {len(rows) - MAX_TENSOR_ROWS} more (`surgeon diff --json` lists every tensor)."]
    return lines


def _unmatched_md(report: QuantReport) -> list[str]:
    rows = [t for t in report.tensors if t.verdict in ("base-only", "quant-only")]
    if not rows:
        return []
    where = {"base-only": "only in the base", "quant-only": "only in the quant"}
    lines = ["", "Not compared:", ""]
    for t in rows:
        expected = "" if t.counts else " (expected)"
        lines.append(f"- {md_code(t.name, table=False)}: {where[t.verdict]}{expected}: {md_text(t.note or '')}.")
    return lines


def _hashes_md(report: QuantReport) -> list[str]:
    hashed = [(f.name, "quant", f.sha256) for f in report.files if f.sha256]
    hashed += [(name, "base", sha) for name, sha in report.base_sha256.items()]
    if not hashed:
        return []
    rows = [f"| {md_code(name)} | {side} | `{sha}` |" for name, side, sha in hashed]
    return [
        "",
        "<details>",
        "<summary>SHA256 of each file compared, hashed from the bytes, to check with sha256sum</summary>",
        "",
        "| File | Checkpoint | SHA256 |",
        "|---|---|---|",
        *rows,
        "",
        "</details>",
    ]
