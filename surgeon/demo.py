"""`surgeon demo`: the whole story on the bundled tiny trained model.

Prune every layer, watch the canary fail, let salvage find the layers that can stay,
then diff and verify what was written. Each step prints what it found.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from surgeon.errors import SurgeonError

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "gemma4-tiny-trained"
DEMO_CANDIDATE = FIXTURE.with_name(FIXTURE.name + "-pruned")  # built by fixtures/build_demo_candidate.py


def run_demo(folder: Path, say: Callable[[str], None], show_canary, show_verify, force: bool = False) -> dict:
    from surgeon.canary import CanaryOptions, default_cache_dir, read_prompts
    from surgeon.canary_run import ComposedCanary, run_canary
    from surgeon.checkpoint import open_checkpoint
    from surgeon.diff import DiffOptions, diff_checkpoints
    from surgeon.hashcache import default_cache_dir as hash_cache
    from surgeon.layers import layer_ranges
    from surgeon.prune import PruneOptions, prune
    from surgeon.render_markdown import render_markdown
    from surgeon.report import summary_line
    from surgeon.salvage import auto_plan, salvage
    from surgeon.verify import verify

    folder = Path(folder)
    if folder.exists():
        if not force:
            raise SurgeonError(f"{folder}: already exists (use --force to replace it)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    base, pruned, salvaged = FIXTURE, folder / "pruned", folder / "salvaged"
    prompts, options, cache = read_prompts(None), CanaryOptions(), default_cache_dir()

    say(f"1. prune: 1 of 8 query heads in every layer of {base.name} (recon importance, lstsq heal)")
    result = prune(base, pruned, PruneOptions(prune_frac=0.125, layers="all"))
    say(f"   wrote {pruned}: layers {result.manifest['written']['layers_text']} changed")

    say("2. canary: greedy generation of the pruned model against the base")
    before = run_canary(str(pruned), str(base), prompts, options, "cpu", "float32", None, None, cache)
    show_canary(before)

    say("3. salvage --auto: the largest set of pruned layers that passes the canary, composed in memory")
    composed = ComposedCanary(base, pruned, prompts, options, "cpu", "float32", None, cache)
    plan = auto_plan(sorted(composed.changed), lambda layers: composed.run(layers).passed)
    for step in plan.steps:
        verdict = "pass" if step.passed else "fail"
        say(f"   canary {step.how:<6} layers {layer_ranges(step.layers) or '(none)':<12} {verdict}")
    say(f"   {len(plan.steps)} canary runs; keeping layers {layer_ranges(plan.keep) or '(none)'}")

    def canary_after(output: Path) -> dict:
        return run_canary(str(output), str(base), prompts, options, "cpu", "float32", None, None, cache).to_json()

    _, manifest = salvage(
        pruned,
        base,
        plan.keep,
        salvaged,
        canary_before=before.to_json(),
        canary_after=canary_after,
        auto_steps=plan.steps,
    )
    after = manifest["salvage"]["canary_after"]
    say(f"   wrote {salvaged}; canary on the result: {'passed' if after['passed'] else 'FAILED'}")

    say("4. diff: what is actually different from base")
    report = diff_checkpoints(open_checkpoint(base), open_checkpoint(salvaged), DiffOptions(cache_dir=hash_cache()))
    say(f"   {summary_line(report)}")
    card = folder / "MODEL_CARD_SECTIONS.md"
    card.write_text(render_markdown(report))
    say(f"   model-card sections written to {card}")

    say("5. verify: the files, the manifest's hashes, and its claims against the base")
    for target in (pruned, salvaged):
        show_verify(verify(target, base))
    return {"pruned": str(pruned), "salvaged": str(salvaged), "kept": plan.keep, "canary_runs": len(plan.steps)}
