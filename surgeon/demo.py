"""`surgeon demo`: the whole story on the bundled tiny trained model.

Prune every layer, watch the canary fail, let salvage find the layers that can stay,
then diff and verify what was written. Each step prints what it found.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

from surgeon.atomic import check_output, output_errors, publish, refuse_inputs, temp_dir, write_text_atomic
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
    from surgeon.writer import MANIFEST_NAME

    folder = Path(folder)
    refuse_inputs(folder, [FIXTURE, DEMO_CANDIDATE])  # before anything is created, inside an input or not
    folder.parent.mkdir(parents=True, exist_ok=True)
    target = check_output(folder, [FIXTURE, DEMO_CANDIDATE], force)
    with output_errors(folder), temp_dir(target) as work, _named_as(work, folder):
        # Built in a hidden folder that moves into place at the end, so an interrupted demo
        # leaves nothing and --force never leaves FOLDER absent. The files name the final paths.
        base, pruned, salvaged = FIXTURE, work / "pruned", work / "salvaged"
        prompts, options, cache = read_prompts(None), CanaryOptions(), default_cache_dir()

        say(f"1. prune: 1 of 8 query heads in every layer of {base.name} (recon importance, lstsq heal)")
        result = prune(base, pruned, PruneOptions(prune_frac=0.125, layers="all"))
        say(f"   wrote {folder / 'pruned'}: layers {result.manifest['written']['layers_text']} changed")

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
        _name_candidate(salvaged / MANIFEST_NAME, folder / "pruned", target / "pruned")
        after = manifest["salvage"]["canary_after"]
        say(f"   wrote {folder / 'salvaged'}; canary on the result: {'passed' if after['passed'] else 'FAILED'}")

        say("4. diff: what is actually different from base")
        written = open_checkpoint(salvaged)
        written.source = str(folder / "salvaged")  # where it will be: the card names it
        # The card's SHA256s are evidence: hashed from the bytes, as `diff --markdown` does.
        evidence = DiffOptions(cache_dir=hash_cache(), trust_cache=False, trust_blob_names=False)
        report = diff_checkpoints(open_checkpoint(base), written, evidence)
        say(f"   {summary_line(report)}")
        write_text_atomic(work / "MODEL_CARD_SECTIONS.md", render_markdown(report))
        publish(work, target, replace=force, shown=folder)
    say(f"   model-card sections written to {folder / 'MODEL_CARD_SECTIONS.md'}")

    say("5. verify: the files, the manifest's hashes, and its claims against the base")
    pruned, salvaged = folder / "pruned", folder / "salvaged"
    for written_folder in (pruned, salvaged):
        show_verify(verify(written_folder, base))
    return {"pruned": str(pruned), "salvaged": str(salvaged), "kept": plan.keep, "canary_runs": len(plan.steps)}


def _name_candidate(manifest_path: Path, given: Path, resolved: Path) -> None:
    """The salvage read its candidate in the hidden build folder; the record names where it is."""
    manifest = json.loads(manifest_path.read_text())
    manifest["salvage"]["candidate"].update(source=str(given), path=str(resolved))
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")


@contextlib.contextmanager
def _named_as(work: Path, folder: Path):
    """An error names FOLDER, not the hidden folder the demo is built in."""
    try:
        yield
    except SurgeonError as exc:
        exc.args = (str(exc).replace(str(work), str(folder)),)
        raise
