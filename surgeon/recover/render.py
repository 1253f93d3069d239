"""Rich renderables for canary and verify reports, shared by the CLI and the TUI."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from surgeon.text import inert, inert_lines


def canary_table(report, title: str = "Canary", expand: bool = False) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True, expand=expand)
    for column in ("prompt", "base", "model", "drift", "self/base", "rep (base)", "agree", "verdict"):
        table.add_column(column, overflow="fold")
    for p in report.prompts:
        failures = inert("; ".join(p.failures))
        verdict = Text("pass", style="green") if p.passed else Text("FAIL: " + failures, style="red")
        table.add_row(  # prompts and generated text keep their line breaks, nothing else raw
            Text(inert_lines(p.prompt)),
            Text(inert_lines(p.base_text)),
            Text(inert_lines(p.text)),
            f"{p.drift:.2f}",
            f"{p.self_ratio:.2f}",
            f"{p.repetition:.2f} ({p.base_repetition:.2f})",
            str(p.agreement),
            verdict,
        )
    return table


def canary_verdict(report) -> Text:
    """One line: the verdict, how many prompts failed against the allowed fraction, and
    which checks failed how often."""
    total, failed = len(report.prompts), report.failed
    allowed = report.options.get("max_fail_frac", 0.0)
    style = "bold green" if report.passed else "bold red"
    verdict = "passed" if report.passed else "FAILED"
    text = Text(f"canary {verdict}: {failed}/{total} prompts failed ({report.fail_frac:.0%}; ", style=style)
    text.append(f"the limit is {allowed:.0%})", style=style)
    counts = failure_counts(report)
    if counts:
        text.append("; " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    return text


def failure_counts(report) -> dict[str, int]:
    """How many prompts failed each kind of check ("drift", "repetition", ...)."""
    counts: dict[str, int] = {}
    for p in report.prompts:
        for failure in p.failures:
            name = failure.split(" ", 1)[0]
            counts[name] = counts.get(name, 0) + 1
    return counts


def verify_text(report) -> Text:
    """ok only for what was checked and held; notes (not checked, or warnings) neutral;
    FAIL for what failed. Names come from files: shown inert, never as markup."""
    against = f" against {inert(report.base)}" if report.base else ""
    text = Text(f"verify {inert(report.checkpoint)}{against}\n")
    for check in report.checks:
        text.append("ok   ", style="green").append(f"{inert(check)}\n")
    for note in report.notes:
        text.append("note ", style="yellow").append(f"{inert(note)}\n")
    for problem in report.discrepancies:
        text.append("FAIL ", style="red").append(f"{inert(problem)}\n")
    count = len(report.discrepancies)
    if not report.ok:
        text.append(f"not verified: {count} problem{'s' if count != 1 else ''}", style="bold red")
    elif report.integrity_only:
        text.append("integrity only: the files agree with the index; no manifest was checked", style="bold yellow")
    elif report.foreign:
        text.append(report.verdict, style="bold yellow").append(
            ": its claims are true of these bytes, but it records no hashes to prove they are the files it describes"
        )
    else:
        text.append("verified", style="bold green")
    return text
