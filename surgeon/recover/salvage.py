"""`surgeon salvage`: keep a candidate's changes in chosen layers, restore the rest to base.

Every tensor of a kept layer comes from the candidate; every other tensor is the base's,
byte for byte. The output has the base's shard layout and index; a shard with no kept
change is the base's file. The manifest carries the candidate's record forward and adds
what salvage did; which layers were written comes from the writer's own hashes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from surgeon.atomic import write_text_atomic
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import Checkpoint, open_checkpoint, source_record
from surgeon.format.hashcache import HashCache, hash_cache_dir
from surgeon.format.hashing import bytes_to_hash, hash_shards
from surgeon.format.manifest import (
    SCHEMA,
    created_now,
    is_surgeon_manifest,
    portable_prune_record,
    read_manifest,
    tool_record,
    written_record,
)
from surgeon.format.writer import (
    MANIFEST_NAME,
    TensorSource,
    WriteReport,
    check_loadable_base,
    check_output_folder,
    write_checkpoint,
)
from surgeon.model.names import LayerSelection, parse_layer_spec, parse_name
from surgeon.options import option
from surgeon.progress import NoProgress
from surgeon.text import layer_ranges


@dataclass
class SearchStep:
    """One try of an automatic search: a plan (the candidate's layers kept) and its verdict."""

    layers: list[int]
    passed: bool
    # canary search: "prefix", "add"; quality budget: "all", "alone", "budget", "canary"
    how: str
    kl_mean: float | None = None  # the composed plan's numbers against the base (budget steps)
    ppl_ratio: float | None = None


@dataclass
class PlanSearch:
    """What salvage --auto found: the plan it keeps (`keep`) and the steps that led there.

    A "plan" is one thing everywhere: the set of the candidate's changed layers that stay on
    the base (surgeon.recover.plan.RollbackPlan edits one, EvalSession.evaluate_plans scores
    some); a search is how one is chosen."""

    keep: list[int]
    steps: list[SearchStep] = field(default_factory=list)
    quality: dict | None = None  # the kept plan's eval summary (budget search)
    layer_kl: dict[int, float | None] | None = None  # each changed layer's KL measured alone (None: not finite)


@dataclass(frozen=True)
class QualityBudget:
    """How far a salvaged model may be from the base, teacher-forced on the eval text."""

    max_kl: float | None = option(
        None,
        "With --auto: keep the most layers whose composed model stays within this mean KL, in nats per token, "
        "searched on one part of the eval text and confirmed on the other.",
        minimum=0,
    )
    max_ppl_ratio: float | None = option(
        None, "With --auto: ... within this perplexity over the base's (a ratio, e.g. 1.02).", minimum=1
    )
    # the CLI's decision, not the search's: the output is written either way
    allow_over_budget: bool = option(
        False,
        "Exit 0, not 1, when the kept plan is over the budget on the text held out from the search "
        "(the output is written either way, and a warning says so).",
    )

    def validate(self) -> None:
        if self.max_kl is None and self.max_ppl_ratio is None:
            raise SurgeonError("a quality budget needs --max-kl or --max-ppl-ratio")
        if (self.max_kl is not None and not self.max_kl >= 0) or (
            self.max_ppl_ratio is not None and not self.max_ppl_ratio >= 1
        ):
            raise SurgeonError("--max-kl must be >= 0 and --max-ppl-ratio >= 1")

    def within(self, summary: dict) -> bool:
        kl, ratio = summary.get("kl_mean"), summary.get("ppl_ratio")
        if self.max_kl is not None and (kl is None or kl > self.max_kl):
            return False
        return self.max_ppl_ratio is None or (ratio is not None and ratio <= self.max_ppl_ratio)

    def text(self) -> str:
        parts = [f"KL <= {self.max_kl:g}" if self.max_kl is not None else ""]
        parts.append(f"perplexity ratio <= {self.max_ppl_ratio:g}" if self.max_ppl_ratio is not None else "")
        return " and ".join(p for p in parts if p)


def parse_keep(spec: str, what: str = "layers to keep") -> LayerSelection:
    """A keep list as typed: "all" (every changed layer), "none" (on purpose) or ranges like
    "0-3,7". Checked only for form here; salvage() checks the layers against the model once
    it has opened it. `what` names the input in messages (the CLI passes its option)."""
    return parse_layer_spec(spec, what, allow_none=True)


def check_keep(keep: list[int] | LayerSelection, tensors) -> list[int] | None:
    """The kept layers, each one a layer the checkpoint has (`tensors`: its names), or None
    for "all"; a layer that does not exist is an error, not a silent no-op."""
    existing = layers_of(tensors)
    if not isinstance(keep, LayerSelection):
        ordered = sorted(set(keep))
        keep = LayerSelection(layer_ranges(ordered) or "none", "layers to keep", tuple((n, n) for n in ordered))
    return None if keep.ranges is None else keep.resolve(existing)


def layers_of(names) -> set[int]:
    """The layer numbers in some tensor names: as many as there are names, whatever the numbers."""
    return {layer for name in names if (layer := parse_name(name).layer) is not None}


def _reshaped(candidate: Checkpoint) -> bool:
    """Whether the candidate's manifest records a reshape (prune --mode reshape, surgeon reshape)."""
    return isinstance(_candidate_manifest(candidate).get("reshape"), dict)


def layer_tensors(base: Checkpoint, candidate: Checkpoint, keep: set[int], keep_non_layer: bool) -> dict:
    """Tensor name -> TensorSource in the candidate, for every tensor that comes from it."""
    for name, info in candidate.tensors.items():
        b = base.tensors.get(name)
        if b is not None and b.dtype == info.dtype and b.shape != info.shape and _reshaped(candidate):
            raise SurgeonError(
                f"{candidate.source}: a reshaped checkpoint (its heads sliced out): salvage works on the "
                "mask-mode build, before the reshape; salvage that one, then reshape what it writes"
            )
        if b is None or b.dtype != info.dtype or b.shape != info.shape:
            raise SurgeonError(
                f"{name}: differs in name, dtype or shape between base and candidate; salvage "
                "needs the same tensors (mask-mode prunes have them)"
            )
    missing = sorted(set(base.tensors) - set(candidate.tensors))
    if missing:
        raise SurgeonError(f"{missing[0]}: in the base but not in the candidate")
    out = {}
    for name, info in candidate.tensors.items():
        parsed = parse_name(name)
        if (parsed.layer is not None and parsed.layer in keep) or (parsed.layer is None and keep_non_layer):
            out[name] = TensorSource(candidate.shard_path(info.file), info.start, info.end)
    return out


def salvage(
    candidate: str | Path,
    base: str | Path,
    keep: list[int] | LayerSelection,
    output: Path,
    *,
    keep_non_layer: bool = False,
    force: bool = False,
    canary_before: dict | None = None,
    canary_after=None,
    auto_steps: list[SearchStep] | None = None,
    cancel=None,
    durable: bool = False,
    progress=None,
    quality: dict | None = None,
) -> tuple[WriteReport, dict]:
    """Write base + the candidate's layers in `keep` (a list, or a parse_keep() spec whose
    "all" means every changed layer). `canary_after(output) -> dict` runs on the written
    result and is recorded in the manifest, as is `quality` (this output's eval against the
    base: surgeon.quality.evaluate.measure's record, with the budget it was searched under)."""
    base_ckpt, cand_ckpt = open_checkpoint(base), open_checkpoint(candidate)
    chosen = check_keep(keep, base_ckpt.tensors)
    every = layers_of(base_ckpt.tensors) if chosen is None else set(chosen)
    chosen_sources = layer_tensors(base_ckpt, cand_ckpt, every, keep_non_layer)
    check_output_folder(Path(output), [base_ckpt, cand_ckpt], force)  # before any input is read
    check_loadable_base(base_ckpt)
    hashes = _input_hashes(base_ckpt, cand_ckpt, cancel, progress)
    sources = _differing(chosen_sources, *(_tensor_sha(c, hashes) for c in (base_ckpt, cand_ckpt)))
    keep = sorted(layers_of(sources)) if chosen is None else chosen
    previous = _candidate_manifest(cand_ckpt)
    holder: dict = {}

    def manifest(report: WriteReport) -> dict:
        record = _manifest(
            previous, base_ckpt, cand_ckpt, keep, keep_non_layer, report, canary_before, auto_steps, hashes
        )
        record.pop("quality", None)  # the candidate's own quality record does not describe this output
        if quality is not None:
            record["quality"] = quality
        holder.update(record)
        return holder

    report = write_checkpoint(
        base_ckpt,
        Path(output),
        sources,
        manifest=manifest,
        force=force,
        cancel=cancel,
        cache_dir=hash_cache_dir(),
        durable=durable,
        progress=progress,
    )
    if canary_after is not None:
        holder["salvage"]["canary_after"] = canary_after(Path(output))
        write_text_atomic(Path(output) / MANIFEST_NAME, json.dumps(holder, indent=2) + "\n")
    return report, holder


def _differing(sources: dict, base_sha: dict[str, str], candidate_sha: dict[str, str]) -> dict:
    """Only the kept tensors whose bytes differ from the base's, by their SHA256s (which
    salvage reads anyway for its record): a shard whose kept tensors all match is then
    copied whole, and the manifest lists real changes only."""
    return {n: src for n, src in sources.items() if base_sha[n] != candidate_sha[n]}


def _tensor_sha(ckpt: Checkpoint, hashes: dict) -> dict[str, str]:
    found = {}
    for shard in ckpt.shards.values():
        found.update(hashes[os.path.realpath(shard.path)].tensors)
    return found


def _candidate_manifest(candidate: Checkpoint) -> dict:
    """The candidate's manifest, to carry forward: surgeon's own merged (its prune record
    stays true of the kept layers), anyone else's kept whole under `candidate_manifest`,
    as a record, never as surgeon's claims. A malformed one is one line, exit 2."""
    previous = read_manifest(candidate.root / MANIFEST_NAME)
    if previous is None:
        return {}
    return portable_prune_record(previous) if is_surgeon_manifest(previous) else {"candidate_manifest": previous}


def _input_hashes(base: Checkpoint, candidate: Checkpoint, cancel, progress) -> dict:
    """Both inputs' shard and tensor hashes (the hash cache makes them free after a diff of
    the two): which layers the candidate really changed, and its shards, for the record."""
    cache = HashCache(hash_cache_dir())
    shards = [*base.shards.values(), *candidate.shards.values()]
    progress = progress or NoProgress()
    progress.start("hashing", bytes_to_hash(shards, cache))
    try:
        return hash_shards(shards, cache, progress=progress.advance, cancel=cancel)
    finally:
        progress.stop()


def _changed_layers(base: Checkpoint, candidate: Checkpoint, hashes: dict) -> set[int]:
    """The layers where some tensor of the candidate differs from the base's."""
    base_sha, cand_sha = _tensor_sha(base, hashes), _tensor_sha(candidate, hashes)
    layers = {parse_name(n).layer for n, sha in cand_sha.items() if base_sha.get(n) != sha}
    return {layer for layer in layers if layer is not None}


def _manifest(
    previous, base, candidate, keep, keep_non_layer, report: WriteReport, canary_before, auto_steps, hashes
) -> dict:
    manifest = dict(previous)
    manifest["schema"] = SCHEMA  # the schema of what salvage writes, whatever its candidate's said
    manifest["written"] = written_record(report, lambda name: parse_name(name).layer)
    candidate_shards = {n: hashes[os.path.realpath(s.path)].file_sha256 for n, s in candidate.shards.items()}
    manifest["salvage"] = {
        "tool": tool_record(),
        "created": created_now(),
        "kept_layers": sorted(keep),
        "keep_non_layer": keep_non_layer,  # verify fails on a non-layer change when this is false
        # only layers the candidate really changed and salvage put back to the base's bytes
        "rolled_back_layers": sorted(_changed_layers(base, candidate, hashes) - set(keep)),
        # named by Hub id and commit, or by name, with their hashes: no path of this machine
        "base": {**source_record(base), "shards": report.base_shards},
        "candidate": {**source_record(candidate), "shards": candidate_shards},
        "canary_before": canary_before,
        "auto": [vars(step) for step in auto_steps] if auto_steps is not None else None,
    }
    return manifest


def canary_search_limit(layers: int) -> int:
    """The most canary runs canary_search makes over `layers` changed layers: the whole set,
    a bisection over prefixes, then one run per layer left, with room to spare."""
    return 2 * layers.bit_length() + layers + 2


def canary_search(layers: list[int], passes, *, max_runs: int | None = None, on_step=None) -> PlanSearch:
    """The largest set of changed layers that passes: bisection over prefixes of `layers`,
    then greedy addition of single layers. `passes(layers) -> bool` runs the canary;
    `on_step(step, runs_left)` hears each run as it ends, with the most runs still to come."""
    steps: list[SearchStep] = []
    limit = max_runs if max_runs is not None else canary_search_limit(len(layers))

    def check(candidate: list[int], how: str) -> bool:
        if len(steps) >= limit:
            raise SurgeonError(f"the automatic search stopped after {limit} canary runs")
        passed = bool(passes(candidate))
        steps.append(SearchStep(sorted(candidate), passed, how))
        if on_step is not None:
            on_step(steps[-1], limit - len(steps))
        return passed

    if layers and check(layers, "prefix"):
        return PlanSearch(sorted(layers), steps)
    low, high = 0, len(layers)  # the prefix of length low passes (empty always does); high fails
    while high - low > 1:
        middle = (low + high) // 2
        if check(layers[:middle], "prefix"):
            low = middle
        else:
            high = middle
    keep = list(layers[:low])
    for layer in layers[low + 1 :]:
        if check([*keep, layer], "add"):
            keep.append(layer)
    return PlanSearch(sorted(keep), steps)


def budget_search(
    layers: list[int], evaluate, budget: QualityBudget, *, canary_passes=None, on_step=None
) -> PlanSearch:
    """The largest set of changed layers whose composed model stays within `budget`.

    `evaluate(plans) -> summaries` scores "base + the candidate's layers K" for each plan
    (EvalSession.evaluate_plans, summarised); `canary_passes(layers) -> bool`, when given,
    confirms a result; `on_step(step)` hears each step as it ends. All layers first: within
    budget and confirmed, that is the answer. Otherwise each layer alone gives its KL
    contribution, the layers are added cheapest
    first while the composed model stays within budget (a layer over budget alone is never
    tried), and when the canary rejects the result, the longest prefix of the layers in the
    order they were added (cheapest first) that it accepts is kept, found by bisection: the
    costliest layers go back to the base, in log2(layers) canary runs, not one run a layer
    (31 s to 90 s each for SmolLM2-135M on 2 cores).
    """
    budget.validate()
    steps: list[SearchStep] = []
    scored: dict[tuple[int, ...], dict] = {}

    def score(plans: list[list[int]], how: str) -> list[bool]:
        summaries = evaluate(plans)
        verdicts = []
        for plan, summary in zip(plans, summaries, strict=True):
            scored[tuple(sorted(plan))] = summary
            verdicts.append(budget.within(summary))
            steps.append(SearchStep(sorted(plan), verdicts[-1], how, summary.get("kl_mean"), summary.get("ppl_ratio")))
            if on_step is not None:
                on_step(steps[-1])
        return verdicts

    def confirmed(plan: list[int]) -> bool:
        if canary_passes is None:
            return True
        passed = bool(canary_passes(sorted(plan)))
        steps.append(SearchStep(sorted(plan), passed, "canary"))
        if on_step is not None:
            on_step(steps[-1])
        return passed

    keep: list[int] = []
    layer_kl: dict[int, float | None] = {}
    if layers and score([list(layers)], "all")[0] and confirmed(list(layers)):
        return PlanSearch(sorted(layers), steps, scored[tuple(sorted(layers))], None)
    if layers:  # over budget, or within it but failing the canary: rank the layers
        alone_ok = dict(zip(layers, score([[layer] for layer in layers], "alone"), strict=True))
        layer_kl = {layer: scored[(layer,)].get("kl_mean") for layer in layers}
        for layer in sorted(layers, key=lambda n: (_sort_key(layer_kl[n]), n)):
            if alone_ok[layer] and score([[*keep, layer]], "budget")[0]:
                keep.append(layer)
    if keep and not confirmed(keep):
        keep = _confirmed_prefix(keep, confirmed)
    if keep and tuple(sorted(keep)) not in scored:
        score([sorted(keep)], "budget")
    quality = scored.get(tuple(sorted(keep))) if keep else None
    return PlanSearch(sorted(keep), steps, quality, layer_kl or None)


def _confirmed_prefix(added: list[int], confirmed) -> list[int]:
    """The longest prefix of `added` that `confirmed` accepts, knowing the whole is rejected
    and the empty prefix (the base) passes."""
    low, high = 0, len(added)
    while high - low > 1:
        middle = (low + high) // 2
        if confirmed(added[:middle]):
            low = middle
        else:
            high = middle
    return added[:low]


def _sort_key(kl: float | None) -> float:
    return float("inf") if kl is None else kl
