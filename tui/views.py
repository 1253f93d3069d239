"""What the tables show, as rows of rich Text: computed from engine reports, no widgets.

Strings from the checkpoints (names, prompts, generated text) are `Text(inert(...))`: a
DataTable parses a plain str cell as markup, so no file string reaches one as a str.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.cells import cell_len, chop_cells
from rich.text import Text

from surgeon.diff.engine import natural_key
from surgeon.diff.report import channel_rows
from surgeon.diff.statuses import STATUS_STYLE
from surgeon.errors import SurgeonError
from surgeon.model.families import LayerSpec
from surgeon.model.names import expert_family, fused_experts, parse_layers
from surgeon.prune.heads import counts_text, head_counts
from surgeon.prune.options import PruneOptions
from surgeon.recover.render import verdict_words
from surgeon.text import inert, inert_lines, layer_ranges

MAP_COLUMNS = ("q", "k", "v", "o", "mlp", "norm", "other")
CELL = {
    "identical": ("·", "dim"),
    "changed": ("●", "yellow"),
    "heads": ("H", "bold red"),
    "rolled back": ("↺", "bold cyan"),
    "absent": (" ", ""),
}
SOURCE_STYLE = {"candidate": "yellow", "base": "cyan", "identical": "dim"}
LEGEND_WORDS = {"identical": "identical", "changed": "changed", "heads": "heads zeroed", "rolled back": "rolled back"}


def map_legend() -> Text:
    """The map's symbols in one line under it (76 columns: it fits 80), drawn from CELL."""
    text = Text()
    for state, words in LEGEND_WORDS.items():
        mark, style = CELL[state]
        text.append(mark, style=style).append(f" {words}  ", style="dim")
    return text.append("blank: no such tensor", style="dim")


def map_column(family: str) -> str:
    """A tensor family's column in the layer map (the map must fit 80 columns)."""
    for projection in ("q", "k", "v", "o"):
        if f"{projection}_proj" in family:
            return projection
    if "mlp" in family or "expert" in family:
        return "mlp"
    return "norm" if "norm" in family else "other"


@dataclass
class LayerRow:
    layer: int
    source: str  # candidate, base, identical
    cells: dict[str, str]  # map column -> CELL key
    changed: int  # tensors that differ
    zeroed_heads: list[int]
    experts: set[int] = field(default_factory=set)  # a mixture-of-experts layer's experts, by name
    changed_experts: set[int] = field(default_factory=set)  # those with a tensor that differs
    fused_experts: int = 0  # the experts of its fused tensors (Gemma 4's experts.gate_up_proj)
    unknown_experts: bool = False  # a fused tensor changed, but which experts was not compared
    channels: tuple[int, int] | None = None  # (MLP channels removed, the MLP's width), None: none removed

    @property
    def expert_count(self) -> int:
        return max(len(self.experts), self.fused_experts)


def layer_rows(report, plan, channels: dict[int, tuple[int, int]] | None = None) -> list[LayerRow]:
    """One row per layer of the main stack, with the plan's choice applied. `channels`: the
    MLP channels each layer removed, {layer: (removed, width)}, as the candidate's manifest
    records them; None: as the diff finds them (down_proj columns newly zero)."""
    rows = {n: LayerRow(n, plan.source_of(n), {}, 0, []) for n in plan.layers}
    for t in report.tensors:
        if t.layer is None or t.stack != report.main_stack or t.layer not in rows:
            continue
        row, column = rows[t.layer], map_column(t.family)
        state = _cell_state(t)
        if state != "identical":
            row.changed += 1
            if row.source == "base":
                state = "rolled back"
        if t.heads is not None and t.heads.projection == "q_proj":
            row.zeroed_heads = t.heads.heads_with("zeroed")
        _note_experts(row, t, state != "identical")
        previous = row.cells.get(column, "identical")
        row.cells[column] = max(previous, state, key=_RANK.index)
    if channels is None:
        channels = {c.layer: (len(c.removed), c.width) for c in channel_rows(report) if c.stack == report.main_stack}
    for layer, (removed, width) in channels.items():
        lost = rows.get(layer)
        if lost is not None and removed and width and lost.changed:  # a layer the diff finds unchanged lost none
            lost.channels = (removed, width)
    return list(rows.values())


_RANK = ["absent", "identical", "rolled back", "changed", "heads"]


def _note_experts(row: LayerRow, t, changed: bool) -> None:
    """The experts a tensor belongs to: one, named in it ("mlp.experts.3.up_proj.weight"), or
    every expert of a fused tensor, whose changed slices the diff's stats compared. A fused
    tensor's expert count is a number from its header: it is only counted, never used to
    size anything."""
    expert = expert_family(t.family)
    if expert is not None:
        row.experts.add(expert[2])
        if changed:
            row.changed_experts.add(expert[2])
        return
    side = t.other or t.base
    count = fused_experts(t.family, side.shape) if side is not None else None
    if not count:
        return
    row.fused_experts = max(row.fused_experts, count)
    known = t.stats.experts_changed if t.stats is not None else None
    if changed and known is None:
        row.unknown_experts = True
    elif changed and known is not None:
        row.changed_experts.update(known)


def _cell_state(t) -> str:
    if t.status == "identical":
        return "identical"
    if t.heads is not None and t.heads.heads_with("zeroed"):
        return "heads"
    return "changed"


def layer_cells(row: LayerRow) -> list[Text]:
    out = [Text(str(row.layer), justify="right"), Text(row.source, style=SOURCE_STYLE[row.source])]
    for column in MAP_COLUMNS:
        mark, style = CELL[row.cells.get(column, "absent")]
        out.append(Text(mark, style=style, justify="center"))
    heads = " ".join([f"#{n}" for n in row.zeroed_heads] + ([channels_share(*row.channels)] if row.channels else []))
    if heads and row.source == "base":
        heads = f"({heads})"  # zeroed in the candidate, but this plan takes the base's heads
    out.append(Text(heads or "-", style="red" if heads and row.source == "candidate" else "dim"))
    return out


def channels_share(removed: int, width: int) -> str:
    """The share of a layer's MLP channels removed, short for the map's last column (80
    columns): "-25% ch" (32 of 128), "-8.59% ch" (11 of 128)."""
    return f"-{100 * removed / width:.3g}% ch"


def channels_cell(result) -> Text:
    """A prune's layer result's MLP channels removed, as prune's summary gives them: "-32/128"."""
    return Text(f"-{len(result.ffn_pruned_channels)}/{result.ffn_width}", justify="right")


def experts_cell(row: LayerRow) -> Text:
    """A mixture-of-experts layer's changed experts by index, as the map gives heads: "#0 of
    16" (a bare "0 of 16" read as a count), "#3, #17 of 128", "#0-5 of 128", "none of 128";
    "-" for a layer without experts; "?": changed, in experts the stats did not compare
    (--no-stats). Short: the Overview's map must fit 80 columns."""
    if not row.expert_count:
        return Text("-", style="dim")
    if not row.changed_experts and not row.unknown_experts:
        return Text(f"none of {row.expert_count}", style="dim")
    named = [f"#{part}" for part in layer_ranges(row.changed_experts).split(", ") if part]
    changed = ", ".join(named + (["?"] if row.unknown_experts else []))
    style = "cyan" if row.source == "base" else "yellow"
    return Text(f"{changed} of {row.expert_count}", style=style)


def shard_cells(shard) -> list[Text]:
    sha = shard.sha256[1] or shard.sha256[0] or ""
    return [
        Text(inert(shard.name), overflow="ellipsis"),
        Text(shard.status, style=STATUS_STYLE.get(shard.status, "")),
        Text(f"{shard.tensors_differing}/{shard.tensors}", justify="right"),
        Text(inert(sha[:12]), style="dim"),
    ]


def short_sha(side) -> str:
    return (side.sha256 or "")[:8] if side is not None else "-"


def relative(t) -> float | None:
    return t.stats.rel_frobenius if t.stats is not None else None


def plan_source(t, from_candidate: set[str]) -> str:
    """Where the tensor comes from if the plan is written: "candidate", "base", or "either"
    when both sides hold the same bytes."""
    if t.status == "identical":
        return "either"
    return "candidate" if t.name in from_candidate else "base"


def shape_text(side) -> str:
    return "x".join(map(str, side.shape)) if side is not None else ""


def _plan_cell(t, from_candidate: set[str]) -> Text:
    source = plan_source(t, from_candidate)
    return Text(source, style=SOURCE_STYLE.get(source, "dim"))


def _relative_cell(t) -> Text:
    rel = relative(t)
    return Text("" if rel is None else f"{rel:.3g}")


def _side_cell(t, what) -> Text:
    side = t.other or t.base
    return Text(what(side) if side is not None else "")


# Each column's cell of a tensor, from the tensor and the names the plan takes from the
# candidate. Every cell is a Text: a DataTable would parse a str cell as markup.
_TENSOR_CELLS = {
    "name": lambda t, plan: FoldedName(inert(t.name)),
    "layer": lambda t, plan: Text("" if t.layer is None else str(t.layer)),
    "status": lambda t, plan: Text(t.status, style=STATUS_STYLE.get(t.status, "")),
    "plan": _plan_cell,
    "relative": lambda t, plan: _relative_cell(t),
    "base": lambda t, plan: Text(inert(short_sha(t.base))),
    "candidate": lambda t, plan: Text(inert(short_sha(t.other))),
    "shape": lambda t, plan: _side_cell(t, shape_text),
    "dtype": lambda t, plan: _side_cell(t, lambda side: inert(side.dtype)),
    "family": lambda t, plan: Text(inert(t.family)),
}


def tensor_cells(t, from_candidate: set[str], columns: Sequence[str] = ()) -> list[Text]:
    """The row of `t`, one cell per column in `columns` (every column when empty); only those
    are built. The name folds onto more lines where its column is narrower than it."""
    return [_TENSOR_CELLS[c](t, from_candidate) for c in columns or TENSOR_COLUMNS]


TENSOR_COLUMNS = ("name", "layer", "status", "plan", "relative", "base", "candidate", "shape", "dtype", "family")
# Which columns stay when the screen is narrow, first kept first; the name is never dropped
# nor cut (it folds), and a column shown is as wide as its widest value, so shapes and the
# 8-hex hashes show whole: at 80 columns `2048x2048` read `2048x204` (issue 12).
TENSOR_KEEP = ("status", "base", "candidate", "shape", "relative", "plan", "layer", "dtype", "family")
TENSOR_WHOLE = ("status", "base", "candidate", "shape")
NAME_MIN = 22  # the name column's least width before another column gives way
NAME_HALF_MAX = 32
CELL_PAD = 2  # a DataTable cell's padding, one each side
# Widths of the values that do not depend on the report: "identical", "candidate", "1.23e-05".
FIXED_WIDTHS = {"status": 9, "plan": 9, "relative": 8, "base": 8, "candidate": 8}


def tensor_layout(widths: dict[str, int], room: int) -> dict[str, int]:
    """The columns shown in `room` screen columns, in table order, each with its width: the
    name takes what the others leave (up to its widest), and folds below that. The columns
    that must show whole (TENSOR_WHOLE) give way only to NAME_MIN; the others also give way
    before the name gets narrower than half the widest name (up to NAME_HALF_MAX): at 100
    columns, keeping every column folded 45-character names onto three lines."""
    half = max(NAME_MIN, min(NAME_HALF_MAX, -(-widths["name"] // 2)))
    used, kept = CELL_PAD, set()
    for column in TENSOR_KEEP:
        least = NAME_MIN if column in TENSOR_WHOLE else half
        if used + widths[column] + CELL_PAD + min(least, widths["name"]) <= room:
            used += widths[column] + CELL_PAD
            kept.add(column)
    name = min(widths["name"], max(NAME_MIN, room - used))
    return {c: name if c == "name" else widths[c] for c in TENSOR_COLUMNS if c == "name" or c in kept}


def fold_points(name: str, width: int) -> list[int]:
    """Where a name folds to fit `width` columns: after a dot where it can
    (`model.layers.0.mlp.experts.` / `0.down_proj.weight`), inside a part only when the part
    alone is wider than the column, and at any character where folding at dots would take
    one line more."""
    width, points, line, offset = max(1, width), [], 0, 0
    for part in re.findall(r"[^.]*\.|[^.]+", name):
        if line and line + cell_len(part) > width:
            points.append(offset)
            line = 0
        for i, piece in enumerate(chop_cells(part, width) if cell_len(part) > width else [part]):
            if i:
                points.append(offset)
                line = 0
            offset += len(piece)
            line += cell_len(piece)
    chars = list(range(width, len(name), width)) if name.isascii() else points
    return points if len(points) <= len(chars) else chars  # dots, unless they cost a line


def name_lines(name: str, width: int) -> int:
    """Lines the name takes in the name column (FoldedName draws it so)."""
    if len(name) <= width and name.isascii() and name.isprintable():
        return 1
    return len(fold_points(inert(name), width)) + 1


def _width(text: str) -> int:
    """Screen columns of a string from a file, as the table shows it (inert)."""
    return len(text) if text.isascii() and text.isprintable() else cell_len(inert(text))


class FoldedName(Text):
    """A tensor name that folds after its dots rather than at any character; its `plain`
    stays the whole name."""

    def wrap(self, console, width, **kwargs):
        if kwargs.get("no_wrap"):
            return super().wrap(console, width, **kwargs)
        return self.divide(fold_points(self.plain, width))


# natural_key: layer 2 before layer 10, in the same order as `surgeon diff` lists them.
TENSOR_SORTS = {
    "name": lambda t: natural_key(t.name),
    "layer": lambda t: (t.layer is None, t.layer or 0, natural_key(t.name)),
    "status": lambda t: (t.status, natural_key(t.name)),
    "relative": lambda t: (-(relative(t) or 0.0), natural_key(t.name)),
}


class TensorIndex:
    """A report's tensors indexed once for the Tensors tab: lower-cased names, and each sort
    order computed the first time it is asked for (sorting 20k names by natural_key takes
    0.2-0.45 s here, so never again on every key typed into the filter). `widths`: each
    column's widest value over every tensor, so the table's columns are fixed once, whole
    for every row, and never measured again as rows are drawn."""

    def __init__(self, tensors: list):
        self.tensors = tensors
        self.lower = [t.name.lower() for t in tensors]
        self._orders: dict[str, list[int]] = {}
        self.widths = {c: max(len(c), FIXED_WIDTHS.get(c, 0)) for c in TENSOR_COLUMNS}
        # Distinct values only, and the names' lengths at C speed when all are plain ASCII:
        # measuring each value took 0.11 s at 20k tensors and 0.54 s at 100k, this 11 and 90-110 ms.
        sides = [side for t in tensors if (side := t.other or t.base) is not None]
        names = [t.name for t in tensors]
        joined = "".join(names)
        layers = [t.layer for t in tensors if t.layer is not None]
        shapes = {tuple(side.shape) for side in sides}
        widest = {
            "name": max(map(len if joined.isascii() and joined.isprintable() else _width, names), default=0),
            "layer": len(str(max(layers))) if layers else 0,
            "shape": max((len("x".join(map(str, shape))) for shape in shapes), default=0),
            "dtype": max(map(_width, {side.dtype for side in sides}), default=0),
            "family": max(map(_width, {t.family for t in tensors}), default=0),
        }
        for column, width in widest.items():
            self.widths[column] = max(self.widths[column], width)

    def order(self, sort: str) -> Sequence[int]:
        if sort == "name":  # the diff engine lists tensors in natural name order already
            return range(len(self.tensors))
        if sort not in self._orders:
            key = TENSOR_SORTS[sort]
            self._orders[sort] = sorted(range(len(self.tensors)), key=lambda i: key(self.tensors[i]))
        return self._orders[sort]

    def filtered(self, sort: str, text: str, status: str, layers: set[int] | None, from_candidate: set[str]) -> list:
        """Tensors whose name contains every word of `text`, with `status` ("all" for any;
        "plan:X" for the plan's source X) and a layer in `layers` (None for any), in `sort`
        order without sorting again. One comprehension per condition: one loop testing every
        condition took 17-27 ms at 20k tensors and 64-130 ms at 100k, this 1-2 and 5-13 ms."""
        tensors, lower = self.tensors, self.lower
        keep = self.order(sort)
        for word in text.lower().split():
            keep = [i for i in keep if word in lower[i]]
        if status.startswith("plan:"):
            keep = [i for i in keep if plan_source(tensors[i], from_candidate) == status[5:]]
        elif status != "all":
            keep = [i for i in keep if tensors[i].status == status]
        if layers is not None:
            keep = [i for i in keep if tensors[i].layer in layers]
        return [tensors[i] for i in keep]


def plan_text(summary, candidate_name: str) -> Text:
    text = Text()
    text.append("keep from candidate: ", style="bold").append(summary.keep_text, style="yellow")
    text.append("    rolled back to base: ", style="bold").append(summary.rolled_back_text, style="cyan")
    non_layer = "candidate" if summary.keep_non_layer else "base"
    text.append(f"\nnon-layer tensors (embeddings, norms, lm_head) from the {non_layer}\n")
    text.append(f"{len(summary.from_candidate)} tensors from the candidate ({inert(candidate_name)}), ")
    text.append(f"{len(summary.from_base)} rolled back to base, {summary.identical_tensors} identical\n")
    written = inert(", ".join(summary.shards_written)) or "none"
    text.append(f"shards written: {len(summary.shards_written)} ({written}); ")
    text.append(f"{len(summary.shards_identical)} stay byte-identical to the base's files")
    for problem in summary.problems:
        text.append(f"\ncannot write: {inert(problem)}", style="red")
    return text


STATUS_NAME_MIN = 16  # cells of the candidate's name kept, at least, when the status line cuts it


def status_text(
    summary,
    canary_report,
    plan_eval: dict | None,
    candidate_name: str,
    width: int | None = None,
    text_name: str | None = None,
) -> Text:
    """The line under every tab: "plan: keep 1-7 · canary: passed (0/5 failed) · eval: KL 0.0123
    on TEXT (e) · candidate: NAME", so the verdicts of the plan in hand are never a tab away.
    Within `width` cells it gives up, in turn: the key hints and the eval's text (the footer
    has the keys; the Plan and Canary tabs name the text), the "plan:" label, the eval (on
    the Plan and Canary tabs), the canary's count (on the Canary tab); only then is the
    candidate's name cut, in its middle. At 80 columns a candidate's name of 29 cells ended
    "candidate: candida…" with nothing given up."""
    name = inert(candidate_name)
    on = inert(text_name) if text_name else None
    if width is None:
        return _status_line(summary, canary_report, plan_eval, name, 0, on)
    for level in range(5):
        line = _status_line(summary, canary_report, plan_eval, name, level, on)
        if line.cell_len <= width:
            return line
    room = max(STATUS_NAME_MIN, width - (line.cell_len - cell_len(name)))
    return _status_line(summary, canary_report, plan_eval, middle_cut(name, room), 4)


def _status_line(
    summary, canary_report, plan_eval: dict | None, name: str, level: int, text_name: str | None = None
) -> Text:
    """The status line at a `level` of shortening, 0 (all of it) to 4 (see status_text)."""
    dot = Text(" · ", style="dim")
    plan = Text("plan: " if level < 2 else "", style="bold").append(f"keep {summary.keep_text}", style="yellow")
    canary = Text("canary: ", style="bold")
    if canary_report is None:
        canary.append("not run (c)" if level < 1 else "not run", style="dim")
    else:
        counts = canary_report.tally
        verdict = verdict_words(counts)  # "passed, borderline" in yellow: one failure from FAILED
        style = {"passed": "green", "passed, borderline": "yellow"}.get(verdict, "bold red")
        # the failed count, as the Canary tab's verdict gives it: "passed 20/25" read as 20 failed
        canary.append(f"{verdict} ({counts.failed}/{counts.total} failed)" if level < 4 else verdict, style=style)
    quality = Text("eval: ", style="bold")
    if plan_eval is None:
        quality.append("not run (e)" if level < 1 else "not run", style="dim")
    else:
        kl = plan_eval.get("kl_mean")
        quality.append("KL n/a" if kl is None else f"KL {kl:.4f}")
        if level < 1 and text_name:
            quality.append(f" on {text_name}", style="dim")
    candidate = Text("candidate: ", style="bold").append(name)
    return dot.join([plan, canary, *([quality] if level < 3 else []), candidate])


def middle_cut(text: str, width: int) -> str:
    """`text` within `width` cells, cut in its middle: names differ at their ends
    ("model-pruned-0.125-layers-all" and "-layers-0-3"), so both ends are kept."""
    if cell_len(text) <= width:
        return text
    head, tail = chop_cells(text, width // 2)[0], ""
    for char in reversed(text):  # the end, as many cells as are left after the head and "…"
        if cell_len(char + tail) > width - 1 - cell_len(head):
            break
        tail = char + tail
    return f"{head}…{tail}"


def inputs_text(prompts: str, count: int, eval_text: str) -> Text:
    """The Canary tab's line of what its verdicts hold for: "prompts: the demo's prompts.txt
    (8) · eval text: the demo's training.txt" (a quality figure names its text)."""
    line = Text("prompts: ").append(inert(prompts)).append(f" ({count})")
    return line.append(" · eval text: ").append(inert(eval_text))


def canary_blocks(report):
    """Each prompt as a block: its verdict and four checks on one line, then the base's and
    the candidate's continuations side by side (readable at 80 columns)."""
    from rich.console import Group
    from rich.table import Table

    blocks = []
    for p in report.prompts:
        head = Text()
        head.append("pass " if p.passed else "FAIL ", style="bold green" if p.passed else "bold red")
        head.append(inert_lines(p.prompt), style="bold")
        checks = f"drift {p.drift:.2f}  self/base {p.self_ratio:.2f}  "
        checks += f"repetition {p.repetition:.2f} (base {p.base_repetition:.2f})  "
        checks += f"agreement {p.agreement}  tokens {p.tokens}"
        head.append(f"\n  {checks}", style="dim")
        if p.failures:
            head.append(f"\n  {inert('; '.join(p.failures))}", style="red")
        pair = Table(expand=True, show_edge=False, box=None, padding=(0, 1))
        pair.add_column("base", ratio=1, overflow="fold", header_style="cyan")
        pair.add_column("candidate", ratio=1, overflow="fold", header_style="yellow")
        pair.add_row(Text(inert_lines(p.base_text.strip())), Text(inert_lines(p.text.strip())))
        blocks.extend([head, pair, Text("")])
    return Group(*blocks)


def auto_steps_text(steps) -> Text:
    """The auto search's canary runs on one line: what was tried, in order, and its verdict."""
    text = Text()
    if not steps:
        return text
    found = [step.layers for step in steps if step.passed]
    answer = layer_ranges(max(found, key=len)) if found else "none"
    text.append(f"last auto search (found keep {answer}), {len(steps)} canary runs: ", style="bold")
    for n, step in enumerate(steps):
        if n:
            text.append(", ")
        text.append(f"{step.how} {layer_ranges(step.layers) or 'none'} ").append_text(_verdict(step.passed))
    return text


def search_live_text(steps, testing: list[int] | None, runs_left: int | None) -> Text:
    """A canary search while it runs: which run it is on and the layers it is testing, with
    at most how many runs may follow, then the runs so far and their verdicts (a run takes
    seconds on the demo model, minutes on a real one)."""
    text = Text("auto search running: ", style="bold")
    if testing is not None:
        text.append(f"run {len(steps) + 1}", style="bold")
        text.append(f" tests keep {layer_ranges(testing) or 'none'}", style="yellow")
        if runs_left is not None:
            text.append(f" (at most {runs_left} more runs after it)", style="dim")
    for n, step in enumerate(steps, start=1):
        text.append("\n  " if n == 1 else ", ")
        text.append(f"run {n} keep {layer_ranges(step.layers) or 'none'} ").append_text(_verdict(step.passed))
    return text


def budget_live_text(steps, doing: str, budget_label: str) -> Text:
    """The quality-budget search while it runs: what it is doing now, then its steps so far."""
    text = Text(f"budget search running ({budget_label}): ", style="bold").append(doing, style="yellow")
    for n, step in enumerate(steps, start=1):
        text.append("\n  " if n == 1 else ", ").append_text(_budget_step(step))
    return text


# --- teacher-forced eval -----------------------------------------------------------------

NOT_EVALUATED = "not evaluated (press e)"
BAR_WIDTH = 6
BAR_EIGHTHS = " ▏▎▍▌▋▊▉█"


def eval_numbers(summary: dict) -> str:
    """A plan's eval against the base on one line, in the CLI's formats."""

    def number(key: str, form: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None else format(value, form)  # null: the logits overflowed

    return (
        f"ppl x{number('ppl_ratio', '.4f')}  KL {number('kl_mean', '.4f')}  "
        f"p99 {number('kl_p99', '.4f')}  top-1 {number('top1', '.1%')}"
    )


def eval_text(summary: dict | None, text_name: str | None = None, brief: bool = False) -> Text:
    """ "eval: <numbers> (N tokens of <text>)" for the current plan, or that it has not been
    evaluated: a figure always says what it was measured on (issue 19). `brief` (the Plan
    tab, one line at 80 columns): perplexity and KL only, a long text name cut at the edge."""
    text = Text("eval: ", style="bold", no_wrap=brief, overflow="ellipsis" if brief else "fold")
    if summary is None:
        return text.append(NOT_EVALUATED, style="yellow")
    on = f" of {inert(text_name)}" if text_name else ""
    numbers = eval_numbers(summary)
    if brief:  # "ppl x1.0123  KL 0.0123": the Canary tab has p99 and top-1
        numbers = numbers[: numbers.index("  p99")]
    return text.append(numbers).append(f"  ({summary['tokens']:,} tokens{on})", style="dim")


def layer_cost_text(layer_kl: dict[int, float | None] | None) -> Text:
    """Each changed layer's KL measured alone, costliest first, on one line (the Plan tab's
    map shows every layer's value and bar; this names the ones that cost most)."""
    text = Text("KL alone: ", style="bold", no_wrap=True, overflow="ellipsis")
    if layer_kl is None:
        return text.append(NOT_EVALUATED, style="yellow")
    if not layer_kl:
        return text.append("the candidate changed no layer", style="dim")
    ordered = sorted(layer_kl.items(), key=lambda item: (-kl_order(item[1]), item[0]))
    text.append("costliest first ", style="dim")
    for n, (layer, kl) in enumerate(ordered):
        text.append(", " if n else "")
        text.append(f"{layer}", style="bold").append(f" {kl_format(kl)}")
    return text


def reshape_text(preview) -> Text:
    """The Plan tab's reshape line: whether the plan, written, could have its removed heads
    sliced out (w offers it then), and what that saves; or why not, in a few words."""
    text = Text("reshape: ", style="bold", no_wrap=True, overflow="ellipsis")
    if preview.problem is not None:
        return text.append("not possible: ", style="dim").append(inert(preview.problem), style="dim")
    return text.append("possible", style="green").append(preview.text().removeprefix("reshape: possible"))


def kl_cell(kl: float | None, largest: float, measured: bool) -> Text:
    """A layer's KL alone as a number and a bar scaled to the costliest layer; blank for a
    layer the candidate did not change, "-" before the per-layer eval has run."""
    if not measured:
        return Text("-", style="dim")
    if kl is None:
        return Text("n/a", style="red")
    eighths = round(BAR_WIDTH * 8 * kl / largest) if largest > 0 else 0
    bar = "█" * (eighths // 8) + (BAR_EIGHTHS[eighths % 8] if eighths % 8 else "")
    style = "bold red" if largest > 0 and kl >= largest / 2 else "yellow"
    return Text.assemble(f"{kl:.4f} ", (bar.ljust(BAR_WIDTH), style))


def kl_order(kl: float | None) -> float:
    return float("inf") if kl is None else kl  # an overflowed layer sorts first: it costs most


def kl_format(kl: float | None) -> str:
    return "n/a" if kl is None else f"{kl:.4f}"


def budget_steps_text(steps, found, budget_label: str) -> Text:
    """The quality-budget search in a few words, short for 60 layers too: the whole
    candidate, how many layers were measured alone (their values are on the Plan tab), the
    layers added cheapest first (green within the budget, red over), then the canary."""
    text = Text()
    if not steps:
        return text
    text.append(f"last budget search ({budget_label}; found keep {layer_ranges(found) or 'none'}): ", style="bold")
    parts = [_budget_step(step) for step in steps if step.how == "all"]
    alone = sum(step.how == "alone" for step in steps)
    if alone:
        parts.append(Text(f"{alone} layers alone"))
    added, kept, last_kl = Text("added cheapest first:"), set[int](), None
    for step in steps:
        if step.how == "budget":
            layers = layer_ranges(set(step.layers) - kept) or "none"
            added.append(f" +{layers}", style="green" if step.passed else "red")
            if step.passed:
                kept, last_kl = set(step.layers), step.kl_mean
    if len(added) > len("added cheapest first:"):
        parts.append(added.append(f" (KL {last_kl:.4f})" if last_kl is not None else ""))
    parts.extend(_budget_step(step) for step in steps if step.how == "canary")
    return text.append_text(Text("; ").join(parts))


def _verdict(passed: bool) -> Text:
    """A canary run's verdict in a search's steps."""
    return Text("pass" if passed else "fail", style="green" if passed else "red")


def _budget_step(step) -> Text:
    text = Text(f"{step.how} {layer_ranges(step.layers) or 'none'} ")
    if step.how == "canary":
        return text.append_text(_verdict(step.passed))
    text.append("within" if step.passed else "over", style="green" if step.passed else "red")
    return text.append(f" (KL {step.kl_mean:.4f})" if step.kl_mean is not None else "")


def prune_heads_text(layers: list[LayerSpec] | None, fraction: str, which: str) -> Text:
    """The Prune tab's line under its fraction: the heads it prunes in the layers typed, as
    prune counts them (`1 of 4 query heads in each of layers 0-2 (25%; asked 12.5%)`), in
    yellow where that is not the fraction asked. Empty until the base's layers are known,
    and while a field does not parse (Start says why)."""
    if not layers:
        return Text("")
    try:
        options = PruneOptions(prune_frac=float(fraction), layers=which)
        options.validate()  # the fraction's range, in the engine's own check
        selected = parse_layers(which, len(layers), what="layers")
    except (ValueError, SurgeonError):
        return Text("")
    counts = head_counts(layers, selected, options.prune_frac, ())
    return Text(f"pruning {counts_text(counts)}", style="" if all(c.exact for c in counts) else "yellow")
