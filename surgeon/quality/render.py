"""`surgeon eval` for people: a summary table, a per-window table, and the Markdown section
a model card gets. Works from the report's JSON (schema surgeon.eval/1), so it needs no
torch: `diff --markdown` renders the section from a manifest's summary."""

from __future__ import annotations

import math
import statistics

from rich.table import Table
from rich.text import Text

from surgeon.quality.record import measured_text, recorded_quality, text_label
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
    console.print(
        Text(f"{inert(data['model'])} against base {inert(data['base'])}", style="bold"),
        Text(f"on {inert(text_label(data['text'], data['totals']['tokens']))}"),
        sep="\n",
    )
    console.print(_summary_table(data["totals"]))
    console.print(_window_table(data["windows"]))


def short_windows_warning(data: dict) -> str | None:
    """One line when most windows are short (under a quarter of the window size): their
    tokens are scored with little context, so both perplexities read high and their ratio
    says little about the model at length (issue 19: 31 windows of 4 to 199 tokens gave a
    base perplexity of 33.8 where the same text read as one gave 10.9)."""
    window = data["text"].get("window") or data["options"]["window"]
    sizes = [w["tokens"] + 1 for w in data["windows"]]  # + its BOS or first token
    short = sum(size < window / 4 for size in sizes)
    if not sizes or short * 2 <= len(sizes):
        return None
    return (
        f"{short} of {len(sizes)} windows are under a quarter of {window} tokens (median "
        f"{statistics.median(sizes):g}): little context per token; without --per-document the "
        "documents are packed into full windows"
    )


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


def quality_markdown(summary: dict, text: dict | None = None) -> list[str]:
    """The "Quality against base" section of a model card, from EvalReport.summary() and the
    text record it was measured on: the card says what the figures describe (that text),
    never an unqualified quality."""
    return [
        "## Quality against base",
        "",
        f"Teacher-forced on {md_code(text_label(text, summary['tokens']), table=False)}, against the base "
        "model. These figures describe that text: on text of another kind (a domain the calibration "
        "did not cover) the same model can be much further from its base; measure on your own "
        "(`surgeon eval --eval-text FILE`).",
        "",
        "| measure | base | model |",
        "|---|---|---|",
        f"| perplexity | {_num(summary['ppl_base'])} | {_num(summary['ppl'])} ({_change(summary['ppl_ratio'])}) |",
        f"| KL(base ‖ model) per token, mean | | {_num(summary['kl_mean'])} |",
        f"| KL(base ‖ model) per token, 99th percentile | | {_num(summary['kl_p99'])} |",
        f"| top-1 agreement with base | | {_pct(summary['top1'])} |",
        "",
    ]


def quality_line(record: dict) -> str:
    """A manifest's quality record on one line, with the text it was measured on (inert)."""
    summary = record.get("eval") or {}
    return inert(
        f"quality against base on {text_label(measured_text(record), summary.get('tokens'))}: "
        f"perplexity x{_num(summary.get('ppl_ratio'))} ({_change(summary.get('ppl_ratio'))}), "
        f"KL {_num(summary.get('kl_mean'))} (p99 {_num(summary.get('kl_p99'))}), top-1 {_pct(summary.get('top1'))}"
    )


def _num(value, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _change(ratio) -> str:
    return "n/a" if ratio is None or not math.isfinite(ratio) else f"{ratio - 1:+.1%}"
