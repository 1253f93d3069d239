"""Rich renderables for canary and verify reports, shared by the CLI and the TUI."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text


def canary_table(report, title: str = "Canary", expand: bool = False) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True, expand=expand)
    for column in ("prompt", "base", "model", "drift", "self/base", "rep", "agree", "verdict"):
        table.add_column(column, overflow="fold")
    for p in report.prompts:
        verdict = Text("pass", style="green") if p.passed else Text("FAIL: " + "; ".join(p.failures), style="red")
        table.add_row(
            p.prompt,
            p.base_text,
            p.text,
            f"{p.drift:.2f}",
            f"{p.self_ratio:.2f}",
            f"{p.repetition:.2f}",
            str(p.agreement),
            verdict,
        )
    return table


def canary_verdict(report) -> Text:
    passed = sum(p.passed for p in report.prompts)
    style = "bold green" if report.passed else "bold red"
    verdict = "passed" if report.passed else "FAILED"
    return Text(f"canary {verdict}: {passed}/{len(report.prompts)} prompts", style=style)


def verify_text(report) -> Text:
    against = f" against {report.base}" if report.base else ""
    text = Text(f"verify {report.checkpoint}{against}\n")
    for check in report.checks:
        text.append("ok   ", style="green").append(f"{check}\n")
    for problem in report.discrepancies:
        text.append("FAIL ", style="red").append(f"{problem}\n")
    if report.ok:
        text.append("verified", style="bold green")
    else:
        text.append(f"{len(report.discrepancies)} discrepancies", style="bold red")
    return text
