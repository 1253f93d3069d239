"""The diff's output formats, one registry (as harlequin's export.py keeps its exporters):
the command takes its flags, help and evidence rule from here, and a new format (SARIF, a
CSV of tensors) is one entry, not a new branch in the command."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from surgeon.diff.engine import DiffReport
    from surgeon.diff.quant_report import QuantReport

# What a format renders: text to print as it is, or a drawing on a Rich console (the command
# draws it on the terminal, or records it as plain text for a file or a pipe).
Rendered = str | Callable[["Console"], None]


@dataclass(frozen=True)
class RenderOptions:
    verbose: bool = False  # every differing tensor, not only the families
    sections: list[str] = field(default_factory=list)  # Markdown the command adds to a card (quality)


@dataclass(frozen=True)
class DiffFormat:
    name: str
    help: str
    render: Callable[[DiffReport, RenderOptions], Rendered]
    # the same format of a checkpoint against its quant (`surgeon diff BASE model.gguf`)
    render_quant: Callable[[QuantReport, RenderOptions], Rendered]
    # Its SHA256s are evidence (a model card): hashed from the bytes in this run, never taken
    # from the stat cache or a Hub blob's name, which are trusted for speed only.
    evidence: bool = False
    card: bool = False  # a model card: the command adds the sections it owns (the quality record)


# Each renderer is imported when its format is the one asked for: `diff --json` then loads
# neither rich's console and tables (the terminal's, 30 ms) nor the card's (cli/diff.py).


def _terminal(report: DiffReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.render_terminal import render_terminal

    return lambda console: render_terminal(report, console, options.verbose)


def _json(report: DiffReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.report import to_json

    return json.dumps(to_json(report), indent=2) + "\n"


def _markdown(report: DiffReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.render_markdown import render_markdown

    return render_markdown(report, options.sections)


def _quant_terminal(report: QuantReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.render_quant import render_quant_terminal

    return lambda console: render_quant_terminal(report, console, options.verbose)


def _quant_json(report: QuantReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.quant_report import to_json

    return json.dumps(to_json(report), indent=2) + "\n"


def _quant_markdown(report: QuantReport, options: RenderOptions) -> Rendered:
    from surgeon.diff.render_quant import render_quant_markdown

    return render_quant_markdown(report, options.sections)


TERMINAL = DiffFormat("text", "The report for people (the default).", _terminal, _quant_terminal)
FORMATS: dict[str, DiffFormat] = {
    f.name: f
    for f in (
        TERMINAL,
        DiffFormat("json", "Print the report as JSON (schema surgeon.diff/1).", _json, _quant_json),
        DiffFormat(
            "markdown",
            "Print the model-card sections as Markdown.",
            _markdown,
            _quant_markdown,
            evidence=True,
            card=True,
        ),
    )
}
