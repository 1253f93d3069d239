"""`surgeon canary`, `surgeon salvage`, `surgeon verify`: recover from a failed prune and
prove what was written."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click

from surgeon.errors import SurgeonError
from surgeon.recover.canary.checks import CanaryOptions

EXIT_CANARY_FAILED = 3
CANARY_DEFAULTS = CanaryOptions()  # the options' defaults are the engine's, stated once


def canary_options(func):
    options = [
        click.option(
            "--prompts",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Prompts instead of the bundled set: one a line, or JSONL with prompt or messages.",
        ),
        click.option(
            "--add-prompts",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Prompts to run after the bundled set (or --prompts), same formats.",
        ),
        click.option("--max-new-tokens", type=click.IntRange(1), default=24, show_default=True),
        click.option(
            "--max-fail-frac",
            type=float,
            default=CANARY_DEFAULTS.max_fail_frac,
            show_default=True,
            help="The canary fails when more than this fraction of prompts fail.",
        ),
        click.option("--max-drift", type=float, default=CANARY_DEFAULTS.max_drift, show_default=True),
        click.option("--max-self-ratio", type=float, default=CANARY_DEFAULTS.max_self_ratio, show_default=True),
        click.option(
            "--repetition-margin",
            type=float,
            default=CANARY_DEFAULTS.repetition_margin,
            show_default=True,
            help="Allowed bigram repetition above the base's on the same prompt.",
        ),
        click.option(
            "--min-tokens",
            type=click.IntRange(0),
            default=CANARY_DEFAULTS.min_tokens,
            show_default=True,
            help="An end before this many tokens fails where the base went on.",
        ),
        click.option(
            "--min-agreement",
            type=click.IntRange(0),
            default=CANARY_DEFAULTS.min_agreement,
            show_default=True,
            help="Tokens equal to the base's before they diverge (0: reported, not checked).",
        ),
        click.option(
            "--bos",
            type=click.Choice(["auto", "none"]),
            default="auto",
            show_default=True,
            help="auto: exactly one BOS; none: no BOS (reproduces the BOS gotcha).",
        ),
        click.option("--device", default="auto", show_default=True),
        click.option("--dtype", default="auto", show_default=True),
        click.option("--tokenizer", type=click.Path(path_type=Path, exists=True)),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _canary_settings(kw: dict):
    from surgeon.recover.canary.checks import CanaryOptions, read_prompts

    options = CanaryOptions(
        max_new_tokens=kw["max_new_tokens"],
        max_drift=kw["max_drift"],
        max_self_ratio=kw["max_self_ratio"],
        repetition_margin=kw["repetition_margin"],
        min_tokens=kw["min_tokens"],
        min_agreement=kw["min_agreement"],
        max_fail_frac=kw["max_fail_frac"],
        bos=kw["bos"],
    )
    options.validate()
    return read_prompts(kw["prompts"], kw["add_prompts"]), options


def render_canary(report, console) -> None:
    from surgeon.recover.render import canary_table, canary_verdict

    console.print(canary_table(report))
    console.print(canary_verdict(report))


def register(main: click.Group, handle_errors, console_for, debug_option) -> None:
    @main.command()
    @click.argument("model")
    @click.option("--base", "base", required=True, help="The unpruned checkpoint to compare with.")
    @click.option("--quant", type=click.Choice(["nf4"]), help="Load through bitsandbytes nf4.")
    @click.option("--no-cache", is_flag=True, help="Recompute the base's outputs.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema surgeon.canary/1).")
    @canary_options
    @debug_option
    @handle_errors
    def canary(model, base, quant, no_cache, as_json, debug, **kw) -> None:
        """Greedy generation checks of MODEL against BASE. Exit 0 pass, 3 fail, 2 trouble."""
        from surgeon.recover.canary.checks import default_cache_dir
        from surgeon.recover.canary.runner import run_canary

        prompts, options = _canary_settings(kw)
        report = run_canary(
            model,
            base,
            prompts,
            options,
            kw["device"],
            kw["dtype"],
            quant,
            str(kw["tokenizer"]) if kw["tokenizer"] else None,
            None if no_cache else default_cache_dir(),
        )
        if as_json:
            sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        else:
            render_canary(report, console_for())
        sys.exit(0 if report.passed else EXIT_CANARY_FAILED)

    @main.command()
    @click.argument("candidate")
    @click.option("--base", "base", required=True, help="The checkpoint the rolled-back layers come from.")
    @click.option(
        "--keep",
        default=None,
        help="Layers to keep from the candidate: ranges like 0-3,7, all (every changed layer) or none.",
    )
    @click.option("--auto", is_flag=True, help="Search the largest set of changed layers that passes the canary.")
    @click.option(
        "--max-kl",
        type=float,
        help="With --auto: keep the most layers whose composed model stays within this mean KL from the base.",
    )
    @click.option("--max-ppl-ratio", type=float, help="With --auto: ... within this perplexity ratio to the base.")
    @click.option(
        "--eval-text",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Text the budget is measured on (.txt or .jsonl; default: the bundled held-out text).",
    )
    @click.option(
        "--eval-tokens", type=click.IntRange(2), default=4096, show_default=True, help="Tokens of it to score."
    )
    @click.option(
        "--eval", "run_eval", is_flag=True, help="Measure the result against BASE (see surgeon eval) into the manifest."
    )
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
    @canary_options
    @debug_option
    @handle_errors
    def salvage(
        candidate,
        base,
        keep,
        auto,
        max_kl,
        max_ppl_ratio,
        eval_text,
        eval_tokens,
        run_eval,
        keep_non_layer,
        run_canary_after,
        output,
        force,
        durable,
        as_json,
        debug,
        **kw,
    ):
        """Keep CANDIDATE's changes in some layers, roll the others back to BASE, write OUT.

        --auto alone searches the largest set of changed layers that passes the canary. With
        --max-kl or --max-ppl-ratio it ranks the layers by their KL from the base measured
        alone, adds them cheapest first while the composed model stays within the budget
        (teacher-forced on the eval text, nothing written), then confirms with the canary."""
        from surgeon.recover.salvage import QualityBudget, parse_keep
        from surgeon.recover.salvage import salvage as run_salvage

        if auto == (keep is not None):
            raise SurgeonError("give exactly one of --keep LAYERS or --auto")
        budget = QualityBudget(max_kl, max_ppl_ratio) if (max_kl, max_ppl_ratio) != (None, None) else None
        if budget is not None and not auto:
            raise SurgeonError("--max-kl and --max-ppl-ratio choose layers: give them with --auto, not --keep")
        if budget is not None:
            budget.validate()
        from surgeon.cli.prune import check_eval_text

        check_eval_text(eval_text, run_eval or budget is not None)
        console = console_for(stderr=as_json)  # with --json, stdout holds the manifest alone
        prompts, options = _canary_settings(kw)
        steps, before, quality = None, None, None
        if auto:
            composed = _composed(base, candidate, prompts, options, kw)
        if auto and budget is not None:
            plan, quality = _budget(base, candidate, composed, budget, eval_text, eval_tokens, kw, console)
            layers, steps = plan.keep, plan.steps
        elif auto:
            plan, before = _auto(composed, console)
            layers, steps = plan.keep, plan.steps
        else:
            layers = parse_keep(keep, what="--keep")
        after = _canary_on_written(base, prompts, options, kw) if run_canary_after else None
        _, manifest = run_salvage(
            candidate,
            base,
            layers,
            output,
            keep_non_layer,
            force,
            before,
            after,
            steps,
            threading.Event(),
            durable,
            quality=quality,
        )
        if run_eval and quality is None:  # a budget search has measured the kept plan already
            from surgeon.cli.prune import eval_settings, record_quality

            eval_options = eval_settings(eval_text, eval_tokens, kw["device"], kw["dtype"], kw["tokenizer"])
            manifest = record_quality(Path(output), base, eval_options)
        if as_json:
            sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
            return
        _salvage_summary(manifest, output, console)

    @main.command()
    @click.argument("checkpoint")
    @click.option("--base", "base", help="Base to check the manifest's claims against (default: the recorded one).")
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
    @debug_option
    @handle_errors
    def verify(checkpoint, base, trust_cache, integrity_only, as_json, debug) -> None:
        """Check CHECKPOINT's files, its manifest's hashes, and its claims against the base.

        Exit status: 0 verified (or, with --integrity-only, the files are sound), 1 a check
        failed or there is no manifest, 2 trouble (such as a malformed manifest)."""
        from surgeon.recover.verify import verify as run_verify

        report = run_verify(checkpoint, base, trust_cache=trust_cache, integrity_only=integrity_only)
        if as_json:
            sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
        else:
            render_verify(report, console_for())
        sys.exit(0 if report.ok else 1)

    @main.command()
    @click.argument("folder", required=False, default="surgeon-demo", type=click.Path(path_type=Path, file_okay=False))
    @click.option("--force", is_flag=True, help="Replace FOLDER if it exists.")
    @debug_option
    @handle_errors
    def demo(folder, force, debug) -> None:
        """The whole story on the bundled tiny model: prune, canary, salvage, diff, verify."""
        from rich.text import Text

        from surgeon.demo import run_demo
        from surgeon.text import inert

        console = console_for()
        run_demo(
            folder,
            say=lambda text: console.print(Text(inert(text))),  # folder and file names, never markup
            show_canary=lambda report: render_canary(report, console),
            show_verify=lambda report: render_verify(report, console),
            force=force,
        )


def render_verify(report, console) -> None:
    from surgeon.recover.render import verify_text

    console.print(verify_text(report), highlight=False, soft_wrap=True)  # one finding, one line


def _composed(base, candidate, prompts, options, kw):
    from surgeon.recover.canary.checks import default_cache_dir
    from surgeon.recover.canary.runner import ComposedCanary

    tokenizer = str(kw["tokenizer"]) if kw["tokenizer"] else None
    return ComposedCanary(base, candidate, prompts, options, kw["device"], kw["dtype"], tokenizer, default_cache_dir())


def _canary_on_written(base, prompts, options, kw):
    """The canary on the files salvage wrote (the base's outputs come from the cache)."""

    def run(output: Path) -> dict:
        from surgeon.recover.canary.checks import default_cache_dir
        from surgeon.recover.canary.runner import run_canary

        tokenizer = str(kw["tokenizer"]) if kw["tokenizer"] else None
        report = run_canary(
            str(output), base, prompts, options, kw["device"], kw["dtype"], None, tokenizer, default_cache_dir()
        )
        return report.to_json()

    return run


def _auto(composed, console):
    from surgeon.recover.salvage import auto_plan

    layers = sorted(composed.changed)
    before = composed.run(layers)

    def passes(candidate_layers):
        return before.passed if candidate_layers == layers else composed.run(candidate_layers).passed

    plan = auto_plan(layers, passes)
    for step in plan.steps:
        from surgeon.model.names import layer_ranges

        verdict = "[green]pass[/]" if step.passed else "[red]fail[/]"
        console.print(f"  canary {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<20} {verdict}")
    console.print(f"  {len(plan.steps)} canary runs")
    return plan, before.to_json()


def _budget(base, candidate, composed, budget, eval_text, eval_tokens, kw, console):
    """The quality-budget search, each step printed; (plan, the record for the manifest)."""
    from surgeon.model.names import layer_ranges
    from surgeon.quality.evaluate import EvalOptions, EvalSession
    from surgeon.recover.salvage import budget_plan

    eval_options = EvalOptions(
        text=str(eval_text) if eval_text else None,
        max_tokens=eval_tokens,
        device=kw["device"],
        dtype=kw["dtype"],
        tokenizer=str(kw["tokenizer"]) if kw["tokenizer"] else None,
    )
    session = EvalSession(base, candidate, eval_options)

    def evaluate(plans):
        return [report.summary() for report in session.evaluate_plans(plans)]

    console.print(f"  quality budget: {budget.text()} on {session.text['tokens']} tokens of {session.text['source']}")
    plan = budget_plan(sorted(session.changed_layers), evaluate, budget, lambda layers: composed.run(layers).passed)
    for step in plan.steps:
        verdict = "[green]within[/]" if step.passed else "[red]over[/]"
        if step.how == "canary":
            verdict = "[green]canary pass[/]" if step.passed else "[red]canary fail[/]"
        numbers = f"KL {_num(step.kl_mean)}  ppl x{_num(step.ppl_ratio)}" if step.how != "canary" else ""
        console.print(f"  {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<20} {numbers:<28} {verdict}")
    record = {
        "how": "salvage --auto with a quality budget (the kept plan, composed in memory)",
        "budget": {"max_kl": budget.max_kl, "max_ppl_ratio": budget.max_ppl_ratio},
        "text": session.text,
        "eval": plan.quality,
        "layer_kl": {str(k): v for k, v in (plan.layer_kl or {}).items()},
    }
    return plan, (record if plan.quality is not None else None)


def _num(value, spec: str = ".4f") -> str:
    """A measured number, or n/a for one that is not finite (recorded as null)."""
    return "n/a" if value is None else format(value, spec)


def _salvage_summary(manifest: dict, output: Path, console) -> None:
    from rich.text import Text

    from surgeon.model.names import layer_ranges
    from surgeon.text import inert

    info = manifest["salvage"]
    written = manifest["written"]
    line = (
        f"wrote {inert(output)}: kept layers {layer_ranges(info['kept_layers']) or '(none)'}, rolled back "
        f"{layer_ranges(info['rolled_back_layers']) or '(none)'}; weights differ from base in "
        f"{layer_ranges(written['layers']) or '(none)'}; {len(written['copied_shards'])} of "
        f"{len(written['shards'])} shards are the base's files"
    )
    console.print(Text(line))  # the folder's name is shown as it is, never as markup
    quality = (manifest.get("quality") or {}).get("eval")
    if quality:
        console.print(
            f"quality against base: perplexity x{_num(quality['ppl_ratio'])}, KL {_num(quality['kl_mean'])} "
            f"(p99 {_num(quality['kl_p99'])}), top-1 {_num(quality['top1'], '.1%')}"
        )
    after = info.get("canary_after")
    if after is not None:
        console.print(f"canary on the result: {'passed' if after['passed'] else 'FAILED'}")
