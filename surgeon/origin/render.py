"""surgeon origin's terminal report: plain text that fits 80 columns, every name inert."""

from __future__ import annotations

from surgeon.model.names import layers_phrase
from surgeon.origin.report import TIER_WORDS, Candidate, OriginReport, layer_scores
from surgeon.text import inert

WIDTH = 80
NAME = 14  # a candidate's column: its name, cut to fit
LABEL = 9


def render_origin(report: OriginReport, verbose: bool = False) -> str:
    ranked = report.ranked
    names = _names(ranked)
    lines = [*_header(report), "", *_candidates(ranked, names)]
    related = [c for c in ranked if c.unrelated is None]
    if related:
        lines += ["", *_layers(related, names, verbose)]
    lines += ["", *_wrap("tiers", _tier_key())]
    if verbose:
        for candidate in related:
            lines += ["", *_differing(candidate, names[candidate.source])]
    return "\n".join(lines) + "\n"


def _header(report: OriginReport) -> list[str]:
    quant = report.quant
    types = ", ".join(f"{name} {count}" for name, count in quant.types.items())
    lines = _wrap("quant", f"{inert(quant.name)} ({inert(quant.architecture)}; {types})")
    if len(quant.files) > 1:
        lines += _wrap("", f"split in {len(quant.files)} files")
    return lines + _wrap("answer", inert(report.answer()))


def _candidates(ranked: list[Candidate], names: dict[str, str]) -> list[str]:
    lines = [f"{'candidate':<{NAME}}  {'':<10} {'agrees':>8}  {'tensors':>9}  layers that disagree"]
    for candidate in ranked:
        name = names[candidate.source]
        if candidate.unrelated is not None:
            lines += _wrap(name.ljust(NAME), f"unrelated: {inert(candidate.unrelated)}", indent=NAME + 2)
            continue
        verdict = "match" if candidate.matched else "consistent" if candidate.consistent else ""
        agreeing = sum(1 for t in candidate.counted if t.matched)
        tensors = f"{agreeing}/{len(candidate.counted)}"
        layers = candidate.differing_layers()
        where = layers_phrase(layers).removeprefix("layers ").removeprefix("layer ") if layers else "-"
        if candidate.differing and not layers:
            where = "outside the layers"
        lines.append(f"{name:<{NAME}}  {verdict:<10} {_percent(candidate.score):>8}  {tensors:>9}  {where}")
    return lines


def _layers(related: list[Candidate], names: dict[str, str], every: bool) -> list[str]:
    """Each candidate's share of agreeing elements per layer; a cross marks a layer where some
    tensor does not agree. Runs of layers where each candidate agrees or not alike are one row
    showing the run's lowest share, unless `every` (--verbose) asks for each layer."""
    columns = related[: max(1, (WIDTH - LABEL) // (NAME + 1))]
    per = [{row["layer"]: row for row in layer_scores(c)} for c in columns]
    keys = sorted({k for scores in per for k in scores}, key=lambda k: (k is None, k if k is not None else 0))
    head = "layer" if every else "layers"
    lines = [head.ljust(LABEL) + " ".join(f"{names[c.source]:>{NAME}}" for c in columns)]
    runs: list[tuple[list[int | None], list[dict | None]]] = []
    for key in keys:
        rows = [scores.get(key) for scores in per]
        last = runs[-1] if runs else None
        joins = last is not None and key is not None and last[0][-1] == (key - 1) and not every
        if joins and last is not None and _pattern(last[1]) == _pattern(rows):
            last[0].append(key)
            last[1][:] = [_lowest(a, b) for a, b in zip(last[1], rows, strict=True)]
        else:
            runs.append(([key], rows))
    for run, rows in runs:
        lines.append(_run_label(run).ljust(LABEL) + " ".join(f"{_cell(row):>{NAME}}" for row in rows))
    if len(columns) < len(related):
        lines.append(f"({len(related) - len(columns)} more candidates: --json has every one)")
    if not every and any(len(run) > 1 for run, _ in runs):
        lines.append("(a run of layers shows its lowest share; -v shows each layer)")
    return lines


def _pattern(rows: list[dict | None]) -> tuple:
    return tuple(
        None if row is None else (row["agreeing"] == row["tensors"], row["consistent"] == row["tensors"])
        for row in rows
    )


def _lowest(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    return a if a["agree"] <= b["agree"] else b


def _run_label(run: list[int | None]) -> str:
    if run[0] is None:
        return "other"
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    # x: a tensor disagrees; ~: every tensor consistent, not every one reproduced
    mark = "" if row["agreeing"] == row["tensors"] else "~ " if row["consistent"] == row["tensors"] else "x "
    return mark + _percent(row["agree"])


def _differing(candidate: Candidate, name: str) -> list[str]:
    differing = candidate.differing
    if not differing:
        return [f"{name}: every tensor agrees"]
    lines = [f"{name}: {len(differing)} tensors disagree"]
    for tensor in differing:
        heads = f" heads {', '.join(map(str, tensor.heads))}" if tensor.heads else ""
        agree = "-" if tensor.agree is None else _percent(tensor.agree)
        tier = f"tier {tensor.tier}" if tensor.tier is not None else "not compared"
        lines += _wrap("", f"{inert(tensor.name)} {inert(tensor.storage or '?')} {tier} {agree}{heads}", 2, 6)
        if tensor.note:
            lines += _wrap("", inert(tensor.note), 6)
    return lines


def _tier_key() -> str:
    return "; ".join(f"{tier}: {words}" for tier, words in TIER_WORDS.items())


def _names(candidates: list[Candidate]) -> dict[str, str]:
    """A short, unique display name per candidate: its folder's name, cut to fit, numbered
    where two would read the same."""
    found: dict[str, str] = {}
    for i, candidate in enumerate(candidates):
        name = inert(candidate.name)
        name = name if len(name) <= NAME else name[: NAME - 1] + "~"
        if name in found.values():
            name = f"{name[: NAME - 3]}#{i + 1}"
        found[candidate.source] = name
    return found


def _percent(share: float) -> str:
    """Two decimals, never rounded up to 100% (99.996% is not agreement)."""
    value = int(share * 10000) / 100
    return f"{value:.2f}%"


def _wrap(label: str, text: str, indent: int = LABEL, hang: int | None = None) -> list[str]:
    """`label` then `text` broken at spaces to fit WIDTH, continued under the text (or at
    column `hang`)."""
    words, lines = text.split(" "), []
    current = label.ljust(indent) if label else " " * indent
    start = len(current)
    for word in words:
        if len(current) > start and len(current) + 1 + len(word) > WIDTH:
            lines.append(current)
            current = " " * (indent if hang is None else hang) + word
        else:
            current += ("" if len(current) == start else " ") + word
    lines.append(current)
    return lines
