"""The TUI's state over one base/candidate pair, apart from its widgets.

A PairSession holds what the app shows and what its jobs find: the pair and the inputs in
use (prompts, eval text, tokenizer), the diff report, the rollback plan (with its undo and
redo), canary and eval results per plan, and the last automatic search (by canary or by
quality budget) with its steps. The app holds a session and the widgets: it handles the
messages, runs the session's work in its job threads and draws what the session holds, as
harlequin keeps its query history and catalog apart from its app.

Nothing here imports textual or torch (tests/tui/test_session.py checks it): the model jobs
import torch when they first run, so the session and its plan bookkeeping work, and are
tested, without either. Methods marked "(worker)" run in a job's thread and only read the
session; the app stores what they return, on its own thread, when the job ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from surgeon.demo import bundled_inputs
from surgeon.diff.engine import DiffOptions, DiffReport, diff_checkpoints
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.hashcache import hash_cache_dir
from surgeon.format.manifest import is_surgeon_manifest, read_manifest
from surgeon.model.families import LayerSpec, model_layout
from surgeon.progress import ProgressSink
from surgeon.prune.reshape import ReshapePreview, preview
from surgeon.quality.options import EvalOptions
from surgeon.recover.canary.checks import CanaryOptions, CanaryReport, Prompt, canary_cache_dir, read_prompts
from surgeon.recover.plan import PlanSummary, RollbackPlan
from surgeon.recover.salvage import (
    PlanSearch,
    QualityBudget,
    SearchStep,
    budget_search,
    canary_search,
    canary_search_limit,
    salvage,
)
from surgeon.recover.verify import VerifyReport, verify
from surgeon.runtime.settings import RunSettings
from surgeon.text import layer_ranges

if TYPE_CHECKING:  # torch: the first canary or eval job imports these
    from surgeon.quality.evaluate import EvalSession
    from surgeon.recover.canary.runner import ComposedCanary

# Teacher-forced eval in the TUI: a small token budget, so that the plan and each changed
# layer alone are scored in seconds on a tiny model (30 s for 9 plans of the 8-layer demo at
# 2048 tokens on a busy 2-core CPU) and in minutes on a 135M one; `surgeon eval` does more.
EVAL_TOKENS = 2048
LOADING_TORCH = "loading torch"  # a model job's first phase, which a cancel cannot cut short

Plan = frozenset[int]  # a plan's key: the candidate's changed layers it keeps
EvalSummary = dict[str, Any]  # EvalReport.summary(): the numbers a manifest or model card carries
RangeEdit = Literal["roll_back", "restore", "keep_only"]  # the RollbackPlan methods over typed layers


class BeforeRun(Protocol):
    """Hears the canary search before each run: the steps so far, the layers the run tests
    and at most how many runs may follow it (a run takes minutes on a real model)."""

    def __call__(self, steps: list[SearchStep], layers: list[int], runs_after: int, /) -> None: ...


class Doing(Protocol):
    """Hears the budget search as it works: the steps so far and what it does now."""

    def __call__(self, steps: list[SearchStep], doing: str, /) -> None: ...


@dataclass(frozen=True)
class PlanStatus:
    """What the status line summarises: the plan in hand, its canary verdict and its eval
    (None where not run on this plan)."""

    summary: PlanSummary
    canary: CanaryReport | None
    eval: EvalSummary | None


@dataclass(frozen=True)
class WriteRequest:
    """A write of the plan as it stood when asked: the job writes and verifies this, whatever
    the plan becomes meanwhile. The records are what `salvage --auto` writes in the manifest."""

    base: Path
    candidate: Path
    keep: list[int]
    keep_non_layer: bool
    output: Path
    replace: bool
    canary_before: dict | None
    auto_steps: list[SearchStep] | None
    quality: dict | None
    reshape: bool = False  # the plan's removed heads sliced out of the written shapes

    def run(self, progress: ProgressSink, cancel: threading.Event) -> VerifyReport:  # (worker)
        if not self.reshape:
            self._salvage(self.output, self.replace, progress, cancel)
        else:
            # as prune --mode reshape does (engine._Run._reshaped): the mask-mode plan beside the
            # output, on its disk, its heads sliced out into the output, then removed
            from surgeon.prune.reshape import mask_build_beside

            with mask_build_beside(self.output) as masked:
                self._salvage(masked, False, progress, cancel)
                from surgeon.prune.reshape import reshape

                progress.start("reshaping", 0)
                reshape(
                    masked,
                    self.output,
                    force=self.replace,
                    config_problem=_transformers_check(),
                    cancel=cancel,
                    progress=progress,
                )
        progress.start("verifying", 0)
        return verify(self.output, self.base)

    def _salvage(self, output: Path, replace: bool, progress: ProgressSink, cancel: threading.Event) -> None:
        salvage(
            self.candidate,
            self.base,
            self.keep,
            output,
            keep_non_layer=self.keep_non_layer,
            force=replace,
            canary_before=self.canary_before,
            auto_steps=self.auto_steps,
            cancel=cancel,
            progress=progress,
            quality=self.quality,
        )


def _transformers_check() -> Callable[[dict], str | None] | None:
    """What transformers says of a reshaped config (surgeon.prune.reshape_check), as the CLI
    asks; None where transformers is not installed (a light install: nothing to ask)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return None
    from surgeon.prune.reshape_check import transformers_problem

    return transformers_problem


class PairSession:
    def __init__(
        self,
        base: Path,
        candidate: Path,
        tokenizer: Path | None = None,
        eval_tokens: int = EVAL_TOKENS,
        eval_text: Path | None = None,
        prompts: Path | None = None,
    ):
        """`prompts` and `eval_text` default to what comes with the base (the demo model's
        own, surgeon.demo.bundled_inputs), else the bundled general ones (None). A bad
        prompts file raises SurgeonError here, before the screen."""
        self.base, self.candidate = Path(base), Path(candidate)
        self.tokenizer = Path(tokenizer) if tokenizer else None  # default: the base's own
        self.eval_tokens = eval_tokens
        own_prompts, own_text = bundled_inputs(self.base)
        self.prompts_path = Path(prompts) if prompts else own_prompts  # None: the bundled general prompts
        self.prompts: list[Prompt] = read_prompts(self.prompts_path)
        self.eval_text = Path(eval_text) if eval_text else own_text  # None: the bundled held-out text
        self.prompts_name = _input_name(self.prompts_path, own_prompts, "the bundled set")
        self.eval_text_name = _input_name(self.eval_text, own_text, "the bundled held-out text")
        self.last_verify: VerifyReport | None = None
        self.last_output: Path | None = None  # the write dialog offers the last folder again
        self._prune_layers: list[LayerSpec] | None = None
        self._start_candidate()

    def _start_candidate(self) -> None:
        """What belongs to one candidate: a new one starts with none of it."""
        self.report: DiffReport | None = None
        self.channels: dict[int, tuple[int, int]] | None = None  # the MLP channels the manifest says each layer lost
        self.plan: RollbackPlan | None = None
        self.composed: ComposedCanary | None = None  # the canary's in-memory model, built once per candidate
        self.auto_steps: list[SearchStep] = []  # the last auto search's runs, shown on the Canary tab
        self.auto_found: Plan | None = None  # the layers that search found
        self.auto_budget: QualityBudget | None = None  # the budget of the last search, None for a canary search
        self.eval_session: EvalSession | None = None  # over the pair, made by the first eval job
        self.eval_reports: dict[Plan, EvalSummary] = {}  # kept layers -> eval summary
        self.layer_kl: dict[int, float | None] | None = None  # each changed layer's KL alone
        self.eval_record: dict | None = None  # the eval text, as the manifest's quality record names it
        self.reshapes: dict[Plan, ReshapePreview] = {}  # what a reshape would make of each plan

    def open_candidate(self, candidate: Path) -> None:
        """Another candidate over the same base (a prune's output): the plan, its undo history,
        canary and eval results and the last search belonged to the old one and go."""
        self.candidate = Path(candidate)
        self._start_candidate()

    # --- the diff -----------------------------------------------------------------------

    def compare(self, progress: ProgressSink, cancel: threading.Event) -> DiffReport:  # (worker)
        """Hash and diff base and candidate."""
        options = DiffOptions(cache_dir=hash_cache_dir())
        pair = open_checkpoint(str(self.base)), open_checkpoint(str(self.candidate))
        return diff_checkpoints(*pair, options, progress=progress, cancel=cancel)

    def loaded(self, report: DiffReport) -> None:
        """The pair's diff: a plan over it starts with every changed layer kept."""
        self.report, self.plan = report, RollbackPlan(report)
        self.channels = manifest_channels(self.candidate)

    def prune_layers(self) -> list[LayerSpec] | None:
        """The base's decoder layers as prune reads them (config and headers, milliseconds), for
        the Prune tab's head count; None where prune cannot read the base (a single file, a
        family it does not know), which the prune itself reports when asked."""
        if self._prune_layers is None:
            try:
                self._prune_layers = model_layout(open_checkpoint(str(self.base))).layers
            except SurgeonError:
                return None
        return self._prune_layers

    # --- the plan -----------------------------------------------------------------------

    def rollback_plan(self) -> RollbackPlan:
        if self.plan is None:
            raise SurgeonError("still hashing the checkpoints: there is no plan yet")
        return self.plan

    def plan_key(self) -> Plan:
        return frozenset(self.rollback_plan().keep)

    def toggle(self, layer: int) -> None:
        self.rollback_plan().toggle(layer)

    def edit_range(self, how: RangeEdit, spec: str) -> None:
        """Roll back, restore or keep only the typed layers ("4-59"); bad layers raise."""
        plan = self.rollback_plan()
        {"roll_back": plan.roll_back, "restore": plan.restore, "keep_only": plan.keep_only}[how](spec)

    def toggle_non_layer(self) -> None:
        self.rollback_plan().toggle_non_layer()

    def undo(self) -> bool:
        """False when there is nothing to undo."""
        return self.rollback_plan().undo()

    def redo(self) -> bool:
        return self.rollback_plan().redo()

    def status(self) -> PlanStatus:
        key = self.plan_key()
        return PlanStatus(self.rollback_plan().summary(), self.canary_reports.get(key), self.eval_reports.get(key))

    def reshape_preview(self) -> ReshapePreview:
        """Whether the plan in hand, written, could be reshaped (its removed heads sliced out)
        and what that saves: from the diff's per-head view of the candidate (the query heads
        zeroed in q_proj and o_proj) in the layers the plan keeps, and the candidate's config
        and headers. No tensor is read; each plan's answer is kept."""
        report, key = self.report, self.plan_key()
        if key not in self.reshapes and report is not None:
            removed: dict[int, list[int]] = {}
            ghosts: dict[int, list[int]] = {}
            kept = set(key)
            channels = {  # the MLP channels zeroed (down_proj columns) in the layers the plan keeps
                t.layer: t.channels.heads_with("zeroed")
                for t in report.tensors
                if t.channels is not None
                and t.channels.projection == "down_proj"
                and t.layer in kept
                and t.stack == report.main_stack
            }
            for t in report.tensors:
                heads = t.heads
                if heads is None or heads.projection != "q_proj" or t.layer not in kept:
                    continue
                if t.stack != report.main_stack or t.layer is None:
                    continue
                removed[t.layer] = [h for h in heads.heads_with("zeroed") if h not in heads.uniform_attention]
                ghosts[t.layer] = list(heads.uniform_attention)
            try:
                self.reshapes[key] = preview(open_checkpoint(str(self.candidate)), removed, ghosts, channels)
            except SurgeonError as exc:
                self.reshapes[key] = ReshapePreview(0, None, problem=str(exc))
        return self.reshapes[key]

    # --- the canary ---------------------------------------------------------------------

    @property
    def canary_reports(self) -> dict[Plan, CanaryReport]:
        """Canary results per set of kept layers: the composed canary's own memory."""
        return dict(self.composed.reports) if self.composed is not None else {}

    def composed_canary(self, progress: ProgressSink, cancel: threading.Event) -> ComposedCanary:  # (worker)
        """The canary's model, loaded by the first canary job of this candidate."""
        if self.composed is None:
            report = self.report
            if report is None:
                raise SurgeonError("still hashing the checkpoints: the canary needs the diff")
            progress.start(loading_phase("loading models"), 0)
            self.composed = _composed_canary(
                self.base, self.candidate, report, self.tokenizer, self.prompts, progress, cancel
            )
        return self.composed

    def run_canary(self, key: Plan, progress: ProgressSink, cancel: threading.Event) -> CanaryReport:  # (worker)
        return self.composed_canary(progress, cancel).run(key, cancel=cancel, progress=progress)

    def canary_search(
        self, progress: ProgressSink, cancel: threading.Event, before_run: BeforeRun
    ) -> PlanSearch:  # (worker)
        """salvage --auto in memory: the largest set of changed layers whose canary passes,
        by bisection over prefixes and then greedy addition."""
        composed = self.composed_canary(progress, cancel)
        changed = sorted(composed.changed)
        steps: list[SearchStep] = []
        runs_left = [canary_search_limit(len(changed))]

        def passes(layers: list[int]) -> bool:
            before_run(steps, layers, runs_left[0] - 1)
            return composed.run(layers, cancel=cancel, progress=progress).passed

        def heard(step: SearchStep, left: int) -> None:
            steps.append(step)
            runs_left[0] = left

        return canary_search(changed, passes, on_step=heard)

    def adopt(self, search: PlanSearch, budget: QualityBudget | None = None) -> None:
        """A search's answer becomes the plan (one undo step), and its steps are kept: shown,
        and written in the manifest if this plan is written."""
        self.auto_steps, self.auto_found, self.auto_budget = search.steps, frozenset(search.keep), budget
        self.rollback_plan().set_keep(search.keep)

    # --- the eval -----------------------------------------------------------------------

    def eval_known(self, key: Plan) -> bool:
        """The plan is scored, and so is each changed layer alone (the first eval does both)."""
        return key in self.eval_reports and self.layer_kl is not None

    def open_eval(self, progress: ProgressSink, cancel: threading.Event) -> EvalSession:  # (worker)
        """The pair's EvalSession, made by the first eval job: its windows and the base's
        stream are reused by every later call. It reports to the job that is using it."""
        if self.eval_session is None:
            progress.start(loading_phase("loading the eval text"), 0)
            from surgeon.quality.evaluate import EvalSession  # torch: loaded by the first eval, not at start

            progress.start("loading the eval text", 0)
            tokenizer = str(self.tokenizer) if self.tokenizer else None
            text = str(self.eval_text) if self.eval_text else None
            own = self.eval_text is not None and self.eval_text == bundled_inputs(self.base)[1]
            # the demo's own text per document, as `surgeon demo` reads it (document_windows)
            options = EvalOptions(
                text=text, max_tokens=self.eval_tokens, per_document=own, run=RunSettings(tokenizer=tokenizer)
            )
            self.eval_session = EvalSession(self.base, self.candidate, options, cancel=cancel)
        self.eval_session.progress, self.eval_session.cancel = progress, cancel
        return self.eval_session

    def evaluate(self, key: Plan, progress: ProgressSink, cancel: threading.Event) -> dict[Plan, EvalSummary]:
        """(worker) The plan `key`, and each changed layer alone if not yet scored: which
        layers cost quality. In memory; nothing is written."""
        session = self.open_eval(progress, cancel)
        alone = [[layer] for layer in sorted(session.changed_layers)] if self.layer_kl is None else []
        return self._evaluate(session, [sorted(key), *alone])

    def _evaluate(
        self, session: EvalSession, plans: list[list[int]], known: dict[Plan, EvalSummary] | None = None
    ) -> dict[Plan, EvalSummary]:
        """(worker) Summaries of the plans not yet known (here or in `known`), scored in one
        layer-major pass."""
        changed = set(session.changed_layers)
        keys = list(dict.fromkeys(frozenset(plan) & changed for plan in plans))
        missing = [k for k in keys if k not in self.eval_reports and k not in (known or {})]
        reports = session.evaluate_plans([sorted(k) for k in missing])
        return {k: report.summary() for k, report in zip(missing, reports, strict=True)}

    def store_eval(self, found: dict[Plan, EvalSummary]) -> None:
        """An eval job's results, kept per plan; each layer's KL alone once all are known."""
        self.eval_reports.update(found)
        session = self.eval_session
        if session is None:  # nothing was scored: no eval job has run
            return
        changed = sorted(session.changed_layers)
        self.eval_record = dict(session.text)
        if self.layer_kl is None and all(frozenset({n}) in self.eval_reports for n in changed):
            self.layer_kl = {n: self.eval_reports[frozenset({n})].get("kl_mean") for n in changed}

    def budget_search(
        self, budget: QualityBudget, progress: ProgressSink, cancel: threading.Event, doing: Doing
    ) -> tuple[PlanSearch, dict[Plan, EvalSummary]]:  # (worker)
        """Auto plan by a quality budget: the largest set of changed layers whose composed
        model stays within the budget on the eval text, confirmed by the canary. Returns the
        search and the evals it made (for store_eval)."""
        session, composed = self.open_eval(progress, cancel), self.composed_canary(progress, cancel)
        found: dict[Plan, EvalSummary] = {}
        steps: list[SearchStep] = []

        def passes(layers: list[int]) -> bool:
            doing(steps, f"the canary tests keep {layer_ranges(layers) or 'none'}")
            return composed.run(layers, cancel=cancel, progress=progress).passed

        def scored(plans: list[list[int]]) -> list[EvalSummary]:
            doing(steps, f"evaluating {len(plans)} {'plan' if len(plans) == 1 else 'plans'}")
            found.update(self._evaluate(session, plans, found))
            known = {**self.eval_reports, **found}
            return [known[frozenset(plan) & set(session.changed_layers)] for plan in plans]

        changed = sorted(session.changed_layers)
        return budget_search(changed, scored, budget, canary_passes=passes, on_step=steps.append), found

    # --- the write ----------------------------------------------------------------------

    def write_request(self, output: Path, replace: bool, reshape: bool = False) -> WriteRequest:
        """The write of the plan in hand to `output`, with what the manifest records of it;
        with `reshape`, its removed heads sliced out (reshape_preview says whether it can)."""
        plan = self.rollback_plan()
        canary_before, auto_steps, quality = self.write_record()
        self.last_output = output
        return WriteRequest(
            self.base,
            self.candidate,
            plan.keep,
            plan.state.keep_non_layer,
            output,
            replace,
            canary_before,
            auto_steps,
            quality,
            reshape,
        )

    def write_record(self) -> tuple[dict | None, list[SearchStep] | None, dict | None]:
        """What the manifest records, as `salvage --auto` does: the canary this plan passed
        or failed here (None only if it was not run on it), the auto search's steps if that
        search found this plan, and the plan's eval (with the budget it was searched under)
        if it was evaluated here."""
        key = self.plan_key()
        report = self.canary_reports.get(key)
        canary = report.to_json() if report is not None else None
        found = self.auto_found is not None and self.auto_found == key
        steps = list(self.auto_steps) if found else None
        summary = self.eval_reports.get(key)
        if summary is None:
            return canary, steps, None
        budget = self.auto_budget if found else None
        how = "surgeon tui: the kept plan, composed in memory"
        if budget:  # unlike salvage --auto, the TUI's search and its figure share one text
            how += "; found by a budget search on this same text (not confirmed on text it did not see)"
        quality = {  # the record `salvage --auto --max-kl` writes, read back by the model card
            "how": how,
            "budget": {"max_kl": budget.max_kl, "max_ppl_ratio": budget.max_ppl_ratio} if budget else None,
            "text": self.eval_record,
            "eval": summary,
            "layer_kl": {str(k): v for k, v in (self.layer_kl or {}).items()},
        }
        return canary, steps, quality


def _composed_canary(
    base: Path,
    candidate: Path,
    report: DiffReport,
    tokenizer: Path | None,
    prompts: list[Prompt],
    progress: ProgressSink,
    cancel: threading.Event,
) -> ComposedCanary:
    """The canary's model: base weights in memory, the candidate's changed layers swappable.
    The diff already knows which tensors changed, so nothing is hashed again. The job's bar
    shows each loading step, and a cancel takes effect between them."""
    from surgeon.recover.canary.runner import ComposedCanary, layer_changes  # torch: the first canary loads it

    changed = layer_changes(report)
    run = RunSettings(tokenizer=str(tokenizer) if tokenizer else None)
    return ComposedCanary(
        base,
        candidate,
        prompts,
        CanaryOptions(),
        run=run,
        cache_dir=canary_cache_dir(),
        changed=changed,
        progress=progress,
        cancel=cancel,
    )


def _input_name(path: Path | None, own: Path | None, bundled: str) -> str:
    """How the Canary tab names the prompts or the eval text: the bundled set, the demo's own
    (that came with the base), or the file given."""
    if path is None:
        return bundled
    return f"the demo's {path.name}" if path == own else path.name


def loading_phase(then: str) -> str:
    """The phase a model job starts in: "loading torch" while torch is not yet imported, the
    seconds (5.5 s measured on the demo, 2 busy cores) that no cancel can cut short; the job
    bar names it, so a cancel pressed then is understood. `then` otherwise."""
    return LOADING_TORCH if "torch" not in sys.modules else then


def manifest_channels(candidate: Path) -> dict[int, tuple[int, int]] | None:
    """{layer: (MLP channels removed, the MLP's width)} as the candidate's surgeon
    prune_manifest.json records them (--ffn-frac), None where it has none or cannot be read:
    the maps then take them from the diff."""
    try:
        manifest = read_manifest(candidate / "prune_manifest.json")
    except SurgeonError:
        return None
    if manifest is None or not is_surgeon_manifest(manifest):
        return None
    found = {}
    for layer in manifest.get("layers") or []:
        if not isinstance(layer, dict):
            continue
        index, width, removed = layer.get("layer"), layer.get("ffn_width"), layer.get("ffn_pruned_channels")
        if isinstance(index, int) and isinstance(width, int) and width > 0 and isinstance(removed, list):
            found[index] = (len(removed), width)
    return found or None
