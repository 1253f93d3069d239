"""`surgeon eval` for people: a summary table, a per-window table, and the Markdown section
a model card gets. Works from the report's JSON (schema surgeon.eval/1), so it needs no
torch: `diff --markdown` renders the section from a manifest's summary."""

from __future__ import annotations

import math
import statistics

from rich.table import Table
from rich.text import Text

from surgeon.quality.record import recorded_quality
from surgeon.text import inert, md_code

OUTLIER_FACTOR = 3.0  # a window whose mean KL is this many times the median window's is marked
NOISE_KL = 1e-6  # nats: below this a window's KL is float rounding, never an outlier
MAX_WINDOW_ROWS = 40  # past this the terminal shows the windows of highest KL, --json has all


def outliers(windows: list[dict]) -> set[int]:
    """Indices of windows whose mean KL is more than OUTLIER_FACTOR x the median window's."""
    values = [w["kl_mean"] for w in windows if w["kl_mean"] is not None]
    if not values:
        return set()
    median = statistics.median(values)
    return {
        w["index"]
        for w in windows
        if w["kl_mean"] is not None and w["kl_mean"] > OUTLIER_FACTOR * median and w["kl_mean"] > NOISE_KL
    }


def render_eval(data: dict, console) -> None:
    """Both tables, each under 80 columns; names from the command line or files are inert."""
    text = data["text"]
    console.print(
        Text(f"{inert(data['model'])} against base {inert(data['base'])}", style="bold"),
        Text(
            f"{inert(text['source'])}: {_count(data['totals']['tokens'])} tokens scored in {text['windows']} windows "
            f"of up to {data['options']['window']}"
        ),
        sep="\n",
    )
    console.print(_summary_table(data["totals"]))
    console.print(_window_table(data["windows"]))


def _summary_table(totals: dict):
    table = Table(title=Text("Quality against base"), title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("perplexity, base", _num(totals["ppl_base"]))
    table.add_row("perplexity, model", _num(totals["ppl"]))
    table.add_row("perplexity ratio", f"{_num(totals['ppl_ratio'], '.4f')} ({_change(totals['ppl_ratio'])})")
    table.add_row("KL(base || model), mean", _num(totals["kl_mean"]))
    table.add_row("KL(base || model), p99", _num(totals["kl_p99"]))
    table.add_row("top-1 agreement", _pct(totals["top1"]))
    return table


def _window_table(windows: list[dict]):
    marked = outliers(windows)
    shown, notes = windows, []
    if marked:
        notes.append(f"! mean KL over {OUTLIER_FACTOR:g}x the median window's")
    if len(windows) > MAX_WINDOW_ROWS:
        worst = sorted(windows, key=lambda w: -(w["kl_mean"] or 0.0))[:MAX_WINDOW_ROWS]
        shown = sorted(worst, key=lambda w: w["index"])
        notes.append(f"the {MAX_WINDOW_ROWS} of highest KL of {len(windows)} windows (--json lists all)")
    caption = Text("; ".join(notes)) if notes else None
    table = Table(title=Text("Per window"), title_justify="left", caption=caption, caption_justify="left")
    for column in ("", "window", "tokens", "ppl base", "ppl", "KL mean", "KL p99", "top-1"):
        table.add_column(column, justify="left" if not column else "right")
    for w in shown:
        flag = w["index"] in marked
        table.add_row(
            "!" if flag else "",
            str(w["index"]),
            str(w["tokens"]),
            _num(w["ppl_base"]),
            _num(w["ppl"]),
            _num(w["kl_mean"]),
            _num(w["kl_p99"]),
            _pct(w["top1"]),
            style="bold yellow" if flag else None,
        )
    return table


def recorded_quality_section(report) -> list[str]:
    """The card's "Quality against base" section when the diffed checkpoint's manifest holds a
    quality record measured against exactly these bytes (surgeon.quality.record), else []."""
    quality = recorded_quality(report)
    if quality is None:
        return []
    summary, text = quality
    return [
        *quality_markdown(summary, text),
        f"As recorded in {md_code('prune_manifest.json', table=False)} when surgeon wrote this checkpoint, "
        "whose shard, config and tokenizer hashes are those of the files above; not measured again by this "
        "diff (`surgeon eval` does that).",
    ]


def quality_markdown(summary: dict, text: str | None = None) -> list[str]:
    """The "Quality against base" section of a model card, from EvalReport.summary();
    `text` names what was read (a file name or bundled:heldout)."""
    where = f" of {md_code(text, table=False)}" if text else ""
    return [
        "## Quality against base",
        "",
        f"Teacher-forced on {_count(summary['tokens'])} tokens{where}, against the base model.",
        "",
        "| measure | base | model |",
        "|---|---|---|",
        f"| perplexity | {_num(summary['ppl_base'])} | {_num(summary['ppl'])} ({_change(summary['ppl_ratio'])}) |",
        f"| KL(base ‖ model) per token, mean | | {_num(summary['kl_mean'])} |",
        f"| KL(base ‖ model) per token, 99th percentile | | {_num(summary['kl_p99'])} |",
        f"| top-1 agreement with base | | {_pct(summary['top1'])} |",
        "",
    ]


def _num(value, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _change(ratio) -> str:
    return "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio - 1:+.1%}"


def _count(value: int) -> str:
    return f"{value:,}"
