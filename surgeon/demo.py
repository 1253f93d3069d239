"""`surgeon demo`: the whole story on the bundled tiny trained model.

Prune every layer, measure it against the base, watch the canary fail, let salvage keep
the layers that fit a quality budget, then diff and verify what was written. Each step
prints what it found.

The tiny model knows only the text it was trained on (surgeon/_data/demo/training.txt, one-line
sentences), so the demo calibrates and measures on that text and asks it prompts of that
kind (surgeon/_data/demo/prompts.txt): on the bundled English corpus and prompts, meant
for real models, its numbers would say nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from surgeon.atomic import output_errors, refuse_inputs, temp_dir, write_text_atomic
from surgeon.bundled import bundled_path
from surgeon.diff.engine import DiffOptions, diff_checkpoints
from surgeon.diff.render_markdown import render_markdown
from surgeon.diff.report import summary_line
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.hashcache import hash_cache_dir
from surgeon.format.replacing import DEMO_CARD
from surgeon.format.writer import check_output_folder, publish_folder
from surgeon.prune.options import PruneOptions
from surgeon.quality.render import recorded_quality_section
from surgeon.recover.canary.checks import CanaryOptions, canary_cache_dir, read_prompts, tally
from surgeon.recover.render import verdict_words
from surgeon.recover.salvage import QualityBudget, budget_search, salvage
from surgeon.recover.verify import verify
from surgeon.runtime.settings import RunSettings
from surgeon.text import layer_ranges

# Package data (surgeon/_data/demo), built by fixtures/build_trained.py and build_demo_candidate.py.
DEMO_MODEL = bundled_path("demo", "model")  # the tiny trained Gemma 4
DEMO_CANDIDATE = bundled_path("demo", "candidate")  # its all-layers prune, whose canary fails
DEMO_TEXT = bundled_path("demo", "training.txt")  # what the tiny model was trained on
DEMO_PROMPTS = bundled_path("demo", "prompts.txt")  # prompts of that kind, for its canary
DEMO_MAX_KL = 0.05
ON_CPU = RunSettings(device="cpu", dtype="float32")  # the tiny model's eval and canary: the same numbers anywhere


def bundled_inputs(base: str | Path) -> tuple[Path | None, Path | None]:
    """(canary prompts, eval text) that come with BASE: the demo's own for the bundled demo
    model, whose base answers the general prompts with noise (its canary "FAILED 14/25" in
    the TUI), and (None, None) for any other model: the general bundled sets."""
    if os.path.realpath(base) == os.path.realpath(DEMO_MODEL):
        return DEMO_PROMPTS, DEMO_TEXT
    return None, None


def run_demo(folder: Path, *, say: Callable[[str], None], show_canary, show_verify, force: bool = False) -> dict:
    # Deferred: torch and transformers (3 s), which only the demo itself runs; the paths
    # above are read by `surgeon tui` (its demo pair) and the tests without them.
    from surgeon.prune.engine import prune
    from surgeon.quality.evaluate import EvalOptions, EvalSession
    from surgeon.recover.canary.runner import ComposedCanary, run_canary

    folder = Path(folder)
    refuse_inputs(folder, [DEMO_MODEL, DEMO_CANDIDATE])  # before anything is created, inside an input or not
    folder.parent.mkdir(parents=True, exist_ok=True)
    # the pair opened as every writer's guard takes its inputs; what --force may replace is its rule too
    target = check_output_folder(folder, [open_checkpoint(DEMO_MODEL), open_checkpoint(DEMO_CANDIDATE)], force)
    with output_errors(folder), temp_dir(target) as work, _named_as(work, folder):
        # Built in a hidden folder that moves into place at the end, so an interrupted demo
        # leaves nothing and --force never leaves FOLDER absent. The files name the final paths.
        base, pruned, salvaged = DEMO_MODEL, work / "pruned", work / "salvaged"
        prompts, options, cache = read_prompts(DEMO_PROMPTS), CanaryOptions(), canary_cache_dir()
        # per document: the tiny model learned one sentence at a time (document_windows)
        measure = EvalOptions(text=str(DEMO_TEXT), max_tokens=2048, per_document=True, run=ON_CPU)

        recipe = PruneOptions(prune_frac=0.125, layers="all", calib=str(DEMO_TEXT))
        say(
            "1. prune: 1 of 8 query heads in every layer of the tiny trained Gemma 4 "
            f"({recipe.importance} importance, {recipe.heal} heal)"
        )
        result = prune(base, pruned, recipe)
        say(f"   wrote {folder / 'pruned'}: layers {result.manifest['written']['layers_text']} changed")

        say(f"2. eval: teacher-forced against the base on {DEMO_TEXT.name}, the text the model learned")
        session = EvalSession(base, pruned, measure)
        say(f"   {_quality_line(session.evaluate_plans([sorted(session.changed_layers)])[0].summary())}")

        say("3. canary: greedy generation of the pruned model against the base")
        before = run_canary(str(pruned), str(base), prompts, options, run=ON_CPU, cache_dir=cache)
        show_canary(before)

        say(f"4. salvage --auto --max-kl {DEMO_MAX_KL}: the most layers within the budget, then the canary")
        composed = ComposedCanary(base, pruned, prompts, options, run=ON_CPU, cache_dir=cache)
        plan = budget_search(
            sorted(session.changed_layers),
            lambda plans: [report.summary() for report in session.evaluate_plans(plans)],
            QualityBudget(max_kl=DEMO_MAX_KL),
            canary_passes=lambda layers: composed.run(layers).passed,
        )
        for step in plan.steps:
            numbers = f"KL {step.kl_mean:.4f}" if step.kl_mean is not None else ""
            verdict = (
                ("within" if step.passed else "over")
                if step.kl_mean is not None
                else ("pass" if step.passed else "fail")
            )
            say(f"   {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<12} {numbers:<12} {verdict}")
        say(f"   {len(plan.steps)} steps; keeping layers {layer_ranges(plan.keep) or '(none)'}")
        say(f"   {_quality_line(plan.quality)}" if plan.quality else "   nothing kept")

        def canary_after(output: Path) -> dict:
            return run_canary(str(output), str(base), prompts, options, run=ON_CPU, cache_dir=cache).to_json()

        # the demo searches and measures on its one small text (salvage --auto splits it)
        how = "surgeon demo: a quality budget search, measured on the text it searched (not confirmed apart)"
        quality = {"how": how, "budget": {"max_kl": DEMO_MAX_KL}}
        _, manifest = salvage(
            pruned,
            base,
            plan.keep,
            salvaged,
            canary_before=before.to_json(),
            canary_after=canary_after,
            auto_steps=plan.steps,
            quality=quality | {"text": session.text, "eval": plan.quality} if plan.quality else None,
        )
        after = manifest["salvage"]["canary_after"]
        counts = tally(after["failed_prompts"], after["prompts_total"], after["max_fail_frac"])
        say(f"   wrote {folder / 'salvaged'}; canary on the result: {verdict_words(counts)}")  # or "passed, borderline"

        say("5. diff: what is actually different from base")
        written = open_checkpoint(salvaged)  # the card and the manifests name it "salvaged", as they name no path
        # The card's SHA256s are evidence: hashed from the bytes, as `diff --markdown` does.
        evidence = DiffOptions(cache_dir=hash_cache_dir(), trust_cache=False, trust_blob_names=False)
        report = diff_checkpoints(open_checkpoint(base), written, evidence)
        say(f"   {summary_line(report)}")
        write_text_atomic(work / DEMO_CARD, render_markdown(report, recorded_quality_section(report)))
        publish_folder(work, target, force, folder)
    say(f"   model-card sections written to {folder / DEMO_CARD}")

    say("6. verify: the files, the manifest's hashes, and its claims against the base")
    pruned, salvaged = folder / "pruned", folder / "salvaged"
    for written_folder in (pruned, salvaged):
        show_verify(verify(written_folder, base))
    return {"pruned": str(pruned), "salvaged": str(salvaged), "kept": plan.keep, "steps": len(plan.steps)}


def _quality_line(summary: dict) -> str:
    """The figures and what they were measured on (every quality figure names its text)."""
    return (
        f"perplexity {summary['ppl_base']:.2f} -> {summary['ppl']:.2f} ({summary['ppl_ratio'] - 1:+.1%}), "
        f"KL {summary['kl_mean']:.4f}, top-1 agreement {summary['top1']:.1%} "
        f"on {summary['tokens']:,} tokens of {DEMO_TEXT.name}"
    )


@contextlib.contextmanager
def _named_as(work: Path, folder: Path):
    """An error names FOLDER, not the hidden folder the demo is built in."""
    try:
        yield
    except SurgeonError as exc:
        exc.args = (str(exc).replace(str(work), str(folder)),)
        raise
