"""What the tables show, as rows of rich Text: computed from engine reports, no widgets.

Strings from the checkpoints (names, prompts, generated text) are `Text(inert(...))`: a
DataTable parses a plain str cell as markup, so no file string reaches one as a str.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

from surgeon.diff.engine import natural_key
from surgeon.diff.statuses import STATUS_STYLE
from surgeon.text import inert, inert_lines

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


def layer_rows(report, plan) -> list[LayerRow]:
    """One row per layer of the main stack, with the plan's choice applied."""
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
        previous = row.cells.get(column, "identical")
        row.cells[column] = max(previous, state, key=_RANK.index)
    return list(rows.values())


_RANK = ["absent", "identical", "rolled back", "changed", "heads"]


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
    heads = " ".join(f"#{n}" for n in row.zeroed_heads)
    if heads and row.source == "base":
        heads = f"({heads})"  # zeroed in the candidate, but this plan takes the base's heads
    out.append(Text(heads or "-", style="red" if heads and row.source == "candidate" else "dim"))
    return out


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


def tensor_cells(t, from_candidate: set[str]) -> list:
    side = t.other or t.base
    rel = relative(t)
    source = plan_source(t, from_candidate)
    return [
        Text(inert(t.name)),
        "" if t.layer is None else t.layer,
        Text(t.status, style=STATUS_STYLE.get(t.status, "")),
        Text(source, style=SOURCE_STYLE.get(source, "dim")),
        "" if rel is None else f"{rel:.3g}",
        Text(inert(short_sha(t.base))),
        Text(inert(short_sha(t.other))),
        "x".join(map(str, side.shape)) if side else "",
        Text(inert(side.dtype)) if side else "",
        Text(inert(t.family)),
    ]


TENSOR_COLUMNS = ("name", "layer", "status", "plan", "relative", "base", "candidate", "shape", "dtype", "family")


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
    0.2-0.45 s here, so never again on every key typed into the filter)."""

    def __init__(self, tensors: list):
        self.tensors = tensors
        self.lower = [t.name.lower() for t in tensors]
        self._orders: dict[str, list[int]] = {}

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
        order without sorting again."""
        words = text.lower().split()
        out = []
        for i in self.order(sort):
            t = self.tensors[i]
            if status.startswith("plan:"):
                if plan_source(t, from_candidate) != status[5:]:
                    continue
            elif status != "all" and t.status != status:
                continue
            if layers is not None and t.layer not in layers:
                continue
            if all(w in self.lower[i] for w in words):
                out.append(t)
        return out


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
    from surgeon.model.names import layer_ranges

    text = Text()
    if not steps:
        return text
    found = [step.layers for step in steps if step.passed]
    answer = layer_ranges(max(found, key=len)) if found else "none"
    text.append(f"last auto search (found keep {answer}), {len(steps)} canary runs: ", style="bold")
    for n, step in enumerate(steps):
        if n:
            text.append(", ")
        text.append(f"{step.how} {layer_ranges(step.layers) or 'none'} ")
        text.append("pass" if step.passed else "fail", style="green" if step.passed else "red")
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


def eval_text(summary: dict | None) -> Text:
    """ "eval: <numbers> (N tokens)" for the current plan, or that it has not been evaluated."""
    text = Text("eval: ", style="bold")
    if summary is None:
        return text.append(NOT_EVALUATED, style="yellow")
    return text.append(eval_numbers(summary)).append(f"  ({summary['tokens']} tokens)", style="dim")


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
    from surgeon.model.names import layer_ranges

    text = Text()
    if not steps:
        return text
    text.append(f"last budget search ({budget_label}; found keep {layer_ranges(found) or 'none'}): ", style="bold")
    parts = [_budget_step(step) for step in steps if step.how == "all"]
    alone = sum(step.how == "alone" for step in steps)
    if alone:
        parts.append(Text(f"{alone} layers alone"))
    added, kept, last_kl = Text("added cheapest first:"), set(), None
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


def _budget_step(step) -> Text:
    from surgeon.model.names import layer_ranges

    text = Text(f"{step.how} {layer_ranges(step.layers) or 'none'} ")
    if step.how == "canary":
        return text.append("pass" if step.passed else "fail", style="green" if step.passed else "red")
    text.append("within" if step.passed else "over", style="green" if step.passed else "red")
    return text.append(f" (KL {step.kl_mean:.4f})" if step.kl_mean is not None else "")
