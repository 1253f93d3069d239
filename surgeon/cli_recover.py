"""`surgeon canary`, `surgeon salvage`, `surgeon verify`: recover from a failed prune and
prove what was written."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import click

from surgeon.errors import SurgeonError

EXIT_CANARY_FAILED = 3


def canary_options(func):
    options = [
        click.option(
            "--prompts",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="Prompts: one a line, or JSONL with prompt or messages.",
        ),
        click.option("--max-new-tokens", type=click.IntRange(1), default=24, show_default=True),
        click.option("--max-drift", type=float, default=3.0, show_default=True),
        click.option("--max-self-ratio", type=float, default=8.0, show_default=True),
        click.option("--max-repetition", type=float, default=0.5, show_default=True),
        click.option("--min-tokens", type=click.IntRange(0), default=5, show_default=True),
        click.option("--min-agreement", type=click.IntRange(0), default=1, show_default=True),
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
    from surgeon.canary import CanaryOptions, read_prompts

    options = CanaryOptions(
        max_new_tokens=kw["max_new_tokens"],
        max_drift=kw["max_drift"],
        max_self_ratio=kw["max_self_ratio"],
        max_repetition=kw["max_repetition"],
        min_tokens=kw["min_tokens"],
        min_agreement=kw["min_agreement"],
        bos=kw["bos"],
    )
    return read_prompts(kw["prompts"]), options


def render_canary(report, console) -> None:
    from surgeon.render_recover import canary_table, canary_verdict

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
        from surgeon.canary import default_cache_dir
        from surgeon.canary_run import run_canary

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
        candidate, base, keep, auto, keep_non_layer, run_canary_after, output, force, durable, as_json, debug, **kw
    ):
        """Keep CANDIDATE's changes in some layers, roll the others back to BASE, write OUT."""
        from surgeon.salvage import parse_keep
        from surgeon.salvage import salvage as run_salvage

        if auto == (keep is not None):
            raise SurgeonError("give exactly one of --keep LAYERS or --auto")
        console = console_for()
        prompts, options = _canary_settings(kw)
        steps = None
        before = None
        if auto:
            composed = _composed(base, candidate, prompts, options, kw)
        if auto:
            plan, before = _auto(composed, console)
            layers, steps = plan.keep, plan.steps
        else:
            layers = parse_keep(keep, what="--keep")
        after = _canary_on_written(base, prompts, options, kw) if run_canary_after else None
        _, manifest = run_salvage(
            candidate, base, layers, output, keep_non_layer, force, before, after, steps, threading.Event(), durable
        )
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
        from surgeon.verify import verify as run_verify

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
    from surgeon.render_recover import verify_text

    console.print(verify_text(report), highlight=False, soft_wrap=True)  # one finding, one line


def _composed(base, candidate, prompts, options, kw):
    from surgeon.canary import default_cache_dir
    from surgeon.canary_run import ComposedCanary

    tokenizer = str(kw["tokenizer"]) if kw["tokenizer"] else None
    return ComposedCanary(base, candidate, prompts, options, kw["device"], kw["dtype"], tokenizer, default_cache_dir())


def _canary_on_written(base, prompts, options, kw):
    """The canary on the files salvage wrote (the base's outputs come from the cache)."""

    def run(output: Path) -> dict:
        from surgeon.canary import default_cache_dir
        from surgeon.canary_run import run_canary

        tokenizer = str(kw["tokenizer"]) if kw["tokenizer"] else None
        report = run_canary(
            str(output), base, prompts, options, kw["device"], kw["dtype"], None, tokenizer, default_cache_dir()
        )
        return report.to_json()

    return run


def _auto(composed, console):
    from surgeon.salvage import auto_plan

    layers = sorted(composed.changed)
    before = composed.run(layers)

    def passes(candidate_layers):
        return before.passed if candidate_layers == layers else composed.run(candidate_layers).passed

    plan = auto_plan(layers, passes)
    for step in plan.steps:
        from surgeon.layers import layer_ranges

        verdict = "[green]pass[/]" if step.passed else "[red]fail[/]"
        console.print(f"  canary {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<20} {verdict}")
    console.print(f"  {len(plan.steps)} canary runs")
    return plan, before.to_json()


def _salvage_summary(manifest: dict, output: Path, console) -> None:
    from rich.text import Text

    from surgeon.layers import layer_ranges
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
    after = info.get("canary_after")
    if after is not None:
        console.print(f"canary on the result: {'passed' if after['passed'] else 'FAILED'}")
