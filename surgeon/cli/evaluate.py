"""`surgeon eval`: perplexity, KL and top-1 agreement of a model against its base; and the
--eval options that prune and salvage share to record that measurement in a manifest."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click

from surgeon.cli.common import console_for, handle_errors, progress_for, warn
from surgeon.cli.options import base_option, build, options_from, renamed
from surgeon.errors import SurgeonError
from surgeon.model.names import parse_layers
from surgeon.options import EVAL_TEXT_HELP, EVAL_TOKENS_HELP
from surgeon.quality.options import FEW_TOKENS, EvalOptions
from surgeon.quality.record import attach
from surgeon.quality.render import render_eval, short_windows_warning
from surgeon.runtime.settings import RunSettings


@click.command("eval")
@click.argument("model")
@base_option("The model MODEL is compared with (its tokenizer is used).")
@options_from(EvalOptions)
@renamed("--jsonl", "--eval-text", "jsonl", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--layers",
    help="Score BASE with only these layers of MODEL put on it (ranges like 0-3,7), composed in memory: "
    "what salvage --keep would write.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.eval/1).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@handle_errors
def eval_command(model, base, layers, as_json, no_progress, jsonl=None, **kw) -> None:
    """Score MODEL against BASE on the same text, teacher-forced, one layer at a time.

    Reports the perplexity of both, the KL divergence of MODEL's next-token distribution
    from BASE's (mean and 99th percentile) and how often their top token agrees, in total
    and per window.
    """
    # Deferred: the engine imports torch, which --help and the light install do without.
    from surgeon.quality.evaluate import EvalSession

    if kw["text"] is not None and jsonl is not None:
        raise SurgeonError("--eval-text and --jsonl are exclusive: pick one")
    if jsonl is not None:  # the old --jsonl FILE: JSON lines whatever the file's suffix
        kw["text"] = jsonl
    options = build(
        EvalOptions,
        kw,
        text_format="jsonl" if jsonl else "auto",
        cache_budget_bytes=0,  # one call: a cache of the base's stream would only add to the peak
    )
    session = EvalSession(base, model, options, progress=progress_for(no_progress), cancel=threading.Event())
    if layers is None:
        data = session.evaluate_model().to_json()
    else:
        plan = parse_layers(layers, len(session.base_layout.layers), what="--layers")
        data = session.evaluate_plans([plan])[0].to_json()
    short = short_windows_warning(data)
    if short:
        warn(short)
    warn_few_tokens({"eval": data["totals"]["tokens"]})
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    render_eval(data, console_for())


def warn_few_tokens(scored: dict[str, int]) -> None:
    """One line when a figure rests on fewer than FEW_TOKENS scored tokens: `scored` names
    each measurement (eval, search, confirmation) and its tokens. eval, prune --eval and
    salvage all say it so."""
    few = {what: count for what, count in scored.items() if count < FEW_TOKENS}
    if few:
        counts = ", ".join(f"{count:,} ({what})" for what, count in few.items())
        warn(
            f"few tokens scored: {counts}, fewer than {FEW_TOKENS:,}; a figure on so few may not hold on "
            "other text: give more --eval-tokens, or a longer --eval-text from the model's own domain"
        )


def quality_options(func=None, *, tokens_help: str = EVAL_TOKENS_HELP):
    """--eval, --eval-text and --eval-tokens: measure what a command wrote against its base,
    as `surgeon eval` does, with its options' names, help and default (EvalOptions owns them);
    `tokens_help`: what a command does with those tokens besides (salvage's budget search
    splits them in two)."""
    if func is None:
        return lambda f: quality_options(f, tokens_help=tokens_help)
    options = [
        click.option(
            "--eval",
            "run_eval",
            is_flag=True,
            help="Measure the result against BASE (perplexity, KL, top-1; see surgeon eval) into the manifest.",
        ),
        click.option(
            "--eval-text",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help=EVAL_TEXT_HELP,
        ),
        click.option(
            "--eval-tokens",
            type=click.IntRange(2),
            default=EvalOptions().max_tokens,
            show_default=True,
            help=tokens_help,
        ),
    ]

    for option in reversed(options):
        func = option(func)
    return func


def check_eval_text(text: Path | None, measured: bool) -> None:
    """--eval-text read before any work: a bad file is found before a long prune, not after."""
    if text is not None and not measured:
        raise SurgeonError("--eval-text is the text --eval measures on: give --eval too")
    if text is not None:
        from surgeon.quality.evaluate import load_eval_text  # deferred: torch, as above

        load_eval_text(Path(text))


def eval_settings(text, tokens: int, run: RunSettings) -> EvalOptions:
    """--eval's EvalOptions: its text and tokens, with the models run as the command runs them."""
    return EvalOptions(text=str(text) if text else None, max_tokens=tokens, run=run)


def record_quality(output: Path, base: str, options: EvalOptions, quiet: bool = False) -> dict:
    """OUTPUT measured against BASE, recorded in its manifest; the new manifest."""
    from surgeon.quality.evaluate import measure  # deferred: torch, as above

    record = measure(output, base, options, progress=progress_for(quiet)) | {"how": "measured after writing (--eval)"}
    warn_few_tokens({"eval": record["eval"]["tokens"]})
    return attach(output, record)
