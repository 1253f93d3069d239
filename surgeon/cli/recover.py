"""`surgeon canary`, `surgeon salvage`, `surgeon verify`: recover from a failed prune and
prove what was written."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click
from rich.text import Text

from surgeon.cli.common import (
    EXIT_CANARY_FAILED,
    EXIT_OVER_BUDGET,
    console_for,
    download_option,
    handle_errors,
    progress_for,
    warn,
    warn_skipped,
)
from surgeon.cli.evaluate import check_eval_text, eval_settings, quality_options, record_quality, warn_few_tokens
from surgeon.cli.options import base_option, options_from
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import fetch_missing, open_checkpoint
from surgeon.options import EVAL_TOKENS_HELP
from surgeon.quality.options import EvalOptions
from surgeon.recover.canary.checks import CanaryOptions, Tally, canary_cache_dir, read_prompts, tally
from surgeon.recover.render import borderline_warning, canary_table, canary_verdict, tally_text, verify_text
from surgeon.recover.salvage import QualityBudget, canary_search, parse_keep
from surgeon.recover.salvage import salvage as run_salvage
from surgeon.recover.verify import verify as run_verify
from surgeon.runtime.settings import RunSettings
from surgeon.text import inert, layer_ranges, markup_safe

# salvage's --eval-tokens: the name, meaning and default they have everywhere (README,
# "Options: one vocabulary"), and what its budget search does with them
SALVAGE_TOKENS_HELP = (
    f"{EVAL_TOKENS_HELP} A budget search (--max-kl, --max-ppl-ratio) searches on one part of them and confirms "
    "on the other."
)


def canary_options(*, quant: bool):
    """The prompts (`prompts`, `add_prompts`), the canary's thresholds (CanaryOptions, taken as
    `options`) and how the models run (RunSettings, taken as `run`): --quant where the whole
    model is loaded, not where it is composed in memory (salvage), whose swapped tensors
    need full precision."""

    def decorate(func):
        func = options_from(RunSettings, skip=() if quant else ("quant",), into="run")(func)
        func = options_from(CanaryOptions, into="options")(func)
        func = click.option(
            "--add-prompts",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Prompts to run after the bundled set (or --prompts), same formats.",
        )(func)
        return click.option(
            "--prompts",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Prompts instead of the bundled set: one a line, or JSONL with prompt or messages.",
        )(func)

    return decorate


def render_canary(report, console) -> None:
    console.print(canary_table(report))
    console.print(canary_verdict(report))


@click.command()
@click.argument("model")
@base_option("The unpruned checkpoint to compare with.")
@click.option("--no-cache", is_flag=True, help="Recompute the base's outputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.canary/2).")
@click.option("--no-progress", is_flag=True, help="No progress bars (they go to stderr, on a terminal only).")
@canary_options(quant=True)
@handle_errors
def canary(
    model, base, no_cache, as_json, no_progress, prompts, add_prompts, options: CanaryOptions, run: RunSettings
) -> None:
    """Greedy generation checks of MODEL against BASE. Exit 0 pass, 3 fail, 2 trouble."""
    # Deferred: the runner imports torch, which --help and the light install do without.
    from surgeon.recover.canary.runner import run_canary

    prompt_list = read_prompts(prompts, add_prompts)
    options.validate()
    report = run_canary(
        model,
        base,
        prompt_list,
        options,
        run=run,
        cache_dir=None if no_cache else canary_cache_dir(),
        progress=progress_for(no_progress),
    )
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render_canary(report, console_for())
    _warn_borderline(report.tally)
    sys.exit(0 if report.passed else EXIT_CANARY_FAILED)


def _warn_borderline(counts: Tally) -> None:
    """A pass one prompt from failing is still a pass (exit 0), said with a warning."""
    message = borderline_warning(counts)
    if message:
        warn(message)


@click.command()
@click.argument("candidate")
@base_option("The checkpoint the rolled-back layers come from.")
@click.option(
    "--keep",
    default=None,
    help="Layers to keep from the candidate: ranges like 0-3,7, all (every changed layer) or none.",
)
@click.option("--auto", is_flag=True, help="Search the largest set of changed layers that passes the canary.")
@options_from(QualityBudget, into="budget")
@quality_options(tokens_help=SALVAGE_TOKENS_HELP)
@click.option("--keep-non-layer", is_flag=True, help="Also take embeddings, norms and lm_head from the candidate.")
@click.option("--canary", "run_canary_after", is_flag=True, help="Run the canary on the result too.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder to write (atomically).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--fsync", "durable", is_flag=True, help="Wait for the files to reach the disk before the rename.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bars (they go to stderr, on a terminal only).")
@canary_options(quant=False)
@handle_errors
def salvage(
    candidate,
    base,
    keep,
    auto,
    budget: QualityBudget,
    run_eval,
    eval_text,
    eval_tokens,
    keep_non_layer,
    run_canary_after,
    output,
    force,
    durable,
    as_json,
    no_progress,
    prompts,
    add_prompts,
    options: CanaryOptions,
    run: RunSettings,
):
    """Keep CANDIDATE's changes in some layers, roll the others back to BASE, write OUT.

    --auto alone searches the largest set of changed layers that passes the canary. With
    --max-kl or --max-ppl-ratio it ranks the layers by their KL from the base measured
    alone, adds them cheapest first while the composed model stays within the budget
    (teacher-forced on one part of the eval text, nothing written), confirms with the
    canary, then measures the kept plan once on the other part: that figure is recorded and
    shown. --eval-text from the model's own domain is the recommended path.

    Exit status: 0 written; 1 written, but the kept plan is over the budget on the part of
    the text the search did not see (0 with --allow-over-budget); 2 trouble."""
    if auto == (keep is not None):
        raise SurgeonError("give exactly one of --keep LAYERS or --auto")
    wanted = _wanted_budget(budget, auto)
    check_eval_text(eval_text, run_eval or wanted is not None)
    _say_notes({"--base": base, "CANDIDATE": candidate})
    console = console_for(stderr=as_json)  # with --json, stdout holds the manifest alone
    prompt_list = read_prompts(prompts, add_prompts)
    options.validate()
    steps, before, quality, confirmed = None, None, None, None
    progress = progress_for(no_progress)
    if auto:
        composed = _composed(base, candidate, prompt_list, options, run, progress)
    if auto and wanted is not None:
        measure = eval_settings(eval_text, eval_tokens, run)
        confirmed = _budget(base, candidate, composed, wanted, measure, console)
        layers, steps, quality = confirmed.found.keep, confirmed.found.steps, confirmed.record
    elif auto:
        plan, before = _auto(composed, console, progress)
        layers, steps = plan.keep, plan.steps
    else:
        layers = parse_keep(keep, what="--keep")
    after = _canary_on_written(base, prompt_list, options, run) if run_canary_after else None
    _, manifest = run_salvage(
        candidate,
        base,
        layers,
        output,
        keep_non_layer=keep_non_layer,
        force=force,
        canary_before=before,
        canary_after=after,
        auto_steps=steps,
        cancel=threading.Event(),
        durable=durable,
        quality=quality,
        progress=progress,
    )
    warn_skipped(manifest)
    if manifest["salvage"].get("canary_after") is not None:
        _warn_borderline(_tally_of(manifest["salvage"]["canary_after"]))
    if run_eval and quality is None:  # a budget search has measured the kept plan already
        manifest = record_quality(Path(output), base, eval_settings(eval_text, eval_tokens, run))
    if as_json:
        sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
    else:
        _salvage_summary(manifest, output, console)
    if confirmed is not None and not confirmed.within:
        _over_budget(confirmed, budget, allowed=budget.allow_over_budget)


def _over_budget(confirmed, budget: QualityBudget, *, allowed: bool) -> None:
    """One line with both figures, after the output is written (it is a sound checkpoint,
    and the user asked for it; its record says it is over); exit 1 unless allowed."""
    search, held_out = confirmed.found.quality, confirmed.confirmed
    exit_note = "" if allowed else f" (exit {EXIT_OVER_BUDGET}; --allow-over-budget accepts it)"
    warn(
        f"the kept plan is over the budget ({budget.text()}) on the text the search did not see: "
        f"{_figures(held_out)} on {held_out['tokens']:,} tokens, against {_figures(search)} on the "
        f"{search['tokens']:,} searched{exit_note}"
    )
    if not allowed:
        sys.exit(EXIT_OVER_BUDGET)


def _figures(summary: dict) -> str:
    return f"KL {_num(summary['kl_mean'])}, perplexity x{_num(summary['ppl_ratio'])}"


def _wanted_budget(budget: QualityBudget, auto: bool) -> QualityBudget | None:
    """The quality budget --max-kl and --max-ppl-ratio ask for, checked; None without them."""
    if (budget.max_kl, budget.max_ppl_ratio) == (None, None):
        if budget.allow_over_budget:
            raise SurgeonError("--allow-over-budget goes with --max-kl or --max-ppl-ratio")
        return None
    if not auto:
        raise SurgeonError("--max-kl and --max-ppl-ratio choose layers: give them with --auto, not --keep")
    budget.validate()
    return budget


def _say_notes(inputs: dict[str, str]) -> None:
    """A warning for each input whose weights are read other than through its index (where
    transformers loads a model.safetensors beside it): the files salvage reads and writes."""
    for what, spec in inputs.items():
        note = open_checkpoint(spec).note  # headers only: milliseconds
        if note:
            warn(f"{what}: {note}")


@click.command()
@click.argument("checkpoint")
@base_option(
    "Base to check the manifest's claims against (default: the recorded one, where it is a Hub id).", required=False
)
@click.option(
    "--trust-cache",
    is_flag=True,
    help="Take shard hashes from the hash cache (keyed by path, size, mtime, ctime, inode, device) "
    "instead of reading the bytes.",
)
@click.option(
    "--integrity-only", is_flag=True, help="Check the files against the index and hash them; no manifest needed."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.verify/1).")
@click.option("--no-progress", is_flag=True, help="No progress bar (it goes to stderr, on a terminal only).")
@download_option
@handle_errors
def verify(checkpoint, base, trust_cache, integrity_only, as_json, no_progress, download) -> None:
    """Check CHECKPOINT's files, its manifest's hashes, and its claims against the base.

    Exit status: 0 verified (or, with --integrity-only, the files are sound), 1 a check
    failed, there is no manifest, or its claims could not be checked (no --base, and the
    recorded base cannot be opened), 2 trouble (such as a malformed manifest)."""
    if download:  # CHECKPOINT and --base; a base only recorded in the manifest stays cache-only
        for spec in (checkpoint, base):
            if spec:
                fetch_missing(spec)
    report = run_verify(
        checkpoint, base, trust_cache=trust_cache, integrity_only=integrity_only, progress=progress_for(no_progress)
    )
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        render_verify(report, console_for())
    sys.exit(0 if report.ok else 1)


def render_verify(report, console) -> None:
    console.print(verify_text(report), highlight=False, soft_wrap=True)  # one finding, one line


def _composed(base, candidate, prompts, options, run: RunSettings, progress):
    from surgeon.recover.canary.runner import ComposedCanary  # deferred: torch, as in canary

    return ComposedCanary(base, candidate, prompts, options, run=run, cache_dir=canary_cache_dir(), progress=progress)


def _canary_on_written(base, prompts, options, run: RunSettings):
    """The canary on the files salvage wrote (the base's outputs come from the cache)."""

    def canary_of(output: Path) -> dict:
        from surgeon.recover.canary.runner import run_canary  # deferred: torch, as in canary

        return run_canary(str(output), base, prompts, options, run=run, cache_dir=canary_cache_dir()).to_json()

    return canary_of


def _auto(composed, console, progress):
    layers = sorted(composed.changed)
    before = composed.run(layers, progress=progress)

    def passes(candidate_layers):
        return before.passed if candidate_layers == layers else composed.run(candidate_layers, progress=progress).passed

    def show(step, runs_left: int) -> None:  # as each run ends: a run can take minutes
        verdict = "[green]pass[/]" if step.passed else "[red]fail[/]"
        left = f"[dim](at most {runs_left} more)[/]" if runs_left else ""
        console.print(f"  canary {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<20} {verdict} {left}")

    plan = canary_search(layers, passes, on_step=show)
    console.print(f"  {len(plan.steps)} canary runs")
    return plan, before.to_json()


def _budget(base, candidate, composed, budget, eval_options: EvalOptions, console):
    """The quality-budget search on one part of the eval text, each step printed, and its
    kept plan measured on the other part (surgeon.quality.budget.ConfirmedSearch)."""
    from surgeon.quality.budget import confirmed_budget_search, scored_tokens, split_session  # deferred: torch
    from surgeon.quality.evaluate import EvalSession

    split = split_session(EvalSession(base, candidate, eval_options))
    searched, held_out = scored_tokens(split.search), scored_tokens(split.confirm)
    source = markup_safe(split.text["source"])
    console.print(f"  budget {budget.text()} on {source}: {searched:,} tokens to search, {held_out:,} to confirm")
    warn_few_tokens({"search": searched, "confirmation": held_out})

    def show(step) -> None:  # as each step ends: a step can take minutes
        verdict = "[green]within[/]" if step.passed else "[red]over[/]"
        if step.how == "canary":
            verdict = "[green]canary pass[/]" if step.passed else "[red]canary fail[/]"
        numbers = f"KL {_num(step.kl_mean)}  ppl x{_num(step.ppl_ratio)}" if step.how != "canary" else ""
        console.print(f"  {step.how:<7} layers {layer_ranges(step.layers) or '(none)':<20} {numbers:<28} {verdict}")

    found = confirmed_budget_search(
        split, budget, canary_passes=lambda layers: composed.run(layers).passed, on_step=show
    )
    if found.confirmed is not None:
        summary = found.confirmed
        numbers = f"KL {_num(summary['kl_mean'])}  ppl x{_num(summary['ppl_ratio'])}"
        verdict = "[green]within[/]" if found.within else "[red]over[/]"
        layers = layer_ranges(found.found.keep)
        console.print(f"  confirm layers {layers:<20} {numbers:<28} {verdict}")
    return found


def _num(value, spec: str = ".4f") -> str:
    """A measured number, or n/a for one that is not finite (recorded as null)."""
    return "n/a" if value is None else format(value, spec)


def _salvage_summary(manifest: dict, output: Path, console) -> None:
    info = manifest["salvage"]
    written = manifest["written"]
    line = (
        f"wrote {inert(output)}: kept layers {layer_ranges(info['kept_layers']) or '(none)'}, rolled back "
        f"{layer_ranges(info['rolled_back_layers']) or '(none)'}; weights differ from base in "
        f"{layer_ranges(written['layers']) or '(none)'}; {len(written['copied_shards'])} of "
        f"{len(written['shards'])} shards are the base's files"
    )
    console.print(Text(line))  # the folder's name is shown as it is, never as markup
    quality = manifest.get("quality") or {}
    if quality.get("eval"):
        from surgeon.quality.render import quality_line  # deferred: rich tables, for this line only

        console.print(Text(quality_line(quality)))
    after = info.get("canary_after")
    if after is not None:
        console.print(Text(f"canary on the result: {tally_text(_tally_of(after), after['max_fail_frac'])}"))


def _tally_of(report: dict) -> Tally:
    """The counts of a canary report's JSON (salvage's canary on what it wrote)."""
    return tally(report["failed_prompts"], report["prompts_total"], report["max_fail_frac"])
