"""Rich renderables for canary and verify reports, shared by the CLI and the TUI."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from surgeon.recover.canary.checks import Tally
from surgeon.text import inert, inert_lines, percent


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
    """One line: the verdict, how many prompts failed against the limit, how many prompts
    away the other verdict is, and which checks failed how often."""
    counts = report.tally
    text = Text(f"canary {tally_text(counts, report.options.get('max_fail_frac', 0.0))}", style=tally_style(counts))
    failures = failure_counts(report)
    if failures:
        text.append("; " + ", ".join(f"{name} {count}" for name, count in failures.items()))
    return text


def tally_text(counts: Tally, max_fail_frac: float) -> str:
    """`passed, borderline: 5/25 prompts failed (20%), the limit is 5 (20%); one more failure
    fails it`: for a report, or for the JSON of one (salvage's canary on its output)."""
    words = verdict_words(counts)
    share = counts.failed / counts.total if counts.total else 0.0
    line = f"{words}: {counts.failed}/{counts.total} prompts failed ({share:.0%}), "
    line += f"the limit is {counts.max_failed} ({percent(max_fail_frac)})"
    return line + (f"; {margin_text(counts)}" if counts.margin else "")


def verdict_words(counts: Tally) -> str:
    if not counts.passed:
        return "FAILED"
    return "passed, borderline" if counts.borderline else "passed"


def tally_style(counts: Tally) -> str:
    if not counts.passed:
        return "bold red"
    return "bold yellow" if counts.borderline else "bold green"


def margin_text(counts: Tally) -> str:
    """How many prompts away the other verdict is: `2 more failures fail it`, `one fewer
    failure would pass it`."""
    number = "one" if counts.margin == 1 else str(counts.margin)
    failures = "failure" if counts.margin == 1 else "failures"
    if counts.passed:
        return f"{number} more {failures} {'fails' if counts.margin == 1 else 'fail'} it"
    return f"{number} fewer {failures} would pass it"


def borderline_warning(counts: Tally) -> str | None:
    """The warning line for a borderline pass (its exit code stays 0); None for any other."""
    if not counts.borderline:
        return None
    return (
        f"the canary passed at its limit ({counts.failed}/{counts.total} prompts failed, the limit is "
        f"{counts.max_failed}): one more failing prompt fails it, so the pass is borderline"
    )


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
