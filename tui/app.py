"""The surgeon TUI: diff, rollback plan, canary, prune and write over one base/candidate pair.

The app holds a PairSession (tui/session.py: the pair, the diff report, the rollback plan,
canary and eval results per plan, the searches) and the widgets. Messages go up, calls go
down: the panes post what the user asks for (`LayerMap.ToggleRequested`,
`PlanPane.RangeRequested`, `PrunePane.PruneSubmitted`, ...), the app handles them with `@on`,
calls down into the session and tells the panes what to show. Every engine call is a job of
the JobRunner, in a thread worker, one at a time, with a progress bar and a cancel key: the
session's worker methods are its work, and the app hands their results to the session when
the job ends. Engine errors become dialogs; nothing here computes what is shown.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerFailed, WorkerState

from surgeon.diff.engine import DiffReport
from surgeon.errors import Cancelled, SurgeonError, missing_extra
from surgeon.prune.options import PruneOptions
from surgeon.recover.canary.checks import CanaryReport
from surgeon.recover.render import verify_text
from surgeon.recover.salvage import PlanSearch, QualityBudget, SearchStep
from surgeon.recover.verify import VerifyReport
from surgeon.text import inert, layer_ranges

from .dialogs import BudgetDialog, ConfirmDialog, HelpScreen, MessageDialog, TensorDetail, WriteDialog
from .jobs import Done, Job, JobBar, JobRunner, Result, Work
from .panes import CanaryPane, LayerMap, OverviewPane, PlanPane, PrunePane, StatusLine, TensorsPane
from .search import SearchBar
from .session import EVAL_TOKENS, EvalSummary, PairSession, Plan, RangeEdit, loading_phase
from .tabs import TAB, TABS
from .views import (
    auto_steps_text,
    budget_live_text,
    budget_steps_text,
    eval_numbers,
    eval_text,
    inputs_text,
    kl_format,
    kl_order,
    layer_rows,
    plan_text,
    reshape_text,
    search_live_text,
    status_text,
)

if TYPE_CHECKING:  # torch: the first prune imports the engine
    from surgeon.prune.engine import PruneResult

# What a cancelled job leaves, after "<job> cancelled"; a write or prune cleans up after itself.
CANCELLED = {
    "write": "; nothing was written",
    "prune": "; nothing was written",
    "hashing": ": the pair is not compared (r hashes again)",
}
# What the TUI adds to an engine error that another option would fix (the CLI adds "; pass --x").
TUI_HINTS = {"tokenizer": "\n\nStart the TUI with `surgeon tui --tokenizer DIR` to use another tokenizer."}
# The key that starts each job again, named when one is refused while another stops.
JOB_KEYS = {"hashing": "r", "canary": "c", "auto plan": "a", "eval": "e", "write": "w", "prune": "p"}
# What the jobs that run a model import: the `prune` extra, absent from a light install.
MODEL_MODULES = ("torch", "transformers")


class _InSession:
    """The session's attribute of the same name, read through the app: `app.plan` is
    `app.session.plan` (the tests, and code written before the session, read them there)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, app: SurgeonApp | None, owner: type | None = None) -> Any:
        return self if app is None else getattr(app.session, self.name)


class SurgeonApp(App):
    TITLE = "surgeon"
    CSS_PATH = "app.tcss"  # the screen's layout; each pane and dialog carries its own CSS
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # wide: map and shard tables side by side
    BINDINGS = [
        *(Binding(tab.key, f"show_tab('{tab.id}')", tab.title, show=False) for tab in TABS),
        Binding("c", "canary", "Canary"),
        Binding("a", "auto_plan", "Auto"),
        Binding("e", "eval", "Eval"),
        Binding("w", "write", "Write"),
        Binding("x", "cancel_job", "Cancel job", show=False),
        Binding("ctrl+z", "undo", "Undo"),
        Binding("ctrl+y", "redo", "Redo", show=False),
        Binding("n", "toggle_non_layer", "Non-layer", show=False),
        Binding("slash", "type_here", "Type", show=False),
        Binding("r", "rehash", "Rehash", show=False),
        Binding("escape", "leave_box", "Leave box", show=False),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]
    # The session's state, read through the app as well (app.report is app.session.report).
    candidate, report, plan, plan_key, composed, canary_reports = (_InSession() for _ in range(6))
    eval_session, eval_reports, layer_kl, auto_steps, last_verify = (_InSession() for _ in range(5))
    prompts_path, eval_text = _InSession(), _InSession()

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
        super().__init__()
        self.session = PairSession(base, candidate, tokenizer, eval_tokens, eval_text, prompts)
        session = self.session
        self.inputs = inputs_text(session.prompts_name, len(session.prompts), session.eval_text_name)
        self.jobs = JobRunner(self)
        self.searching: Text | None = None  # the running search's live line, None when none runs

    # --- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield JobBar(self.jobs, id="job-bar")
        with TabbedContent(initial=TABS[0].id):
            for tab in TABS:
                with TabPane(tab.label, id=tab.id):
                    yield tab.pane()
        yield StatusLine(id="status-line")
        yield SearchBar(id="search-bar")
        yield Footer(compact=True)  # every key of the footer fits 80 columns

    def on_mount(self) -> None:
        self.sub_title = inert(f"{self.session.base.name} → {self.session.candidate.name}")
        self.query_one(CanaryPane).show_inputs(self.inputs)
        self._focus_tab(TABS[0].id)
        self.load_pair()

    # --- loading the pair ---------------------------------------------------------------

    def load_pair(self) -> None:
        """Hash and diff base and candidate; the screens fill in when it is done."""
        session, candidate = self.session, self.session.candidate

        if self.start_job("hashing", lambda job: session.compare(job.progress, job.cancel), self._loaded):
            self.query_one("#summary", Static).update("Hashing both checkpoints...")
            line = Text(f"hashing both checkpoints · candidate: {inert(candidate.name)}")
            self.query_one(StatusLine).show(lambda width: line)

    def action_rehash(self) -> None:
        self.load_pair()

    def _loaded(self, report: DiffReport) -> None:
        self.session.loaded(report)
        self.query_one(PrunePane).show_layers(self.session.prune_layers())
        self.refresh_plan()
        self.notify(f"{len(report.tensors)} tensors compared", timeout=3)

    def refresh_plan(self) -> None:
        session = self.session
        if session.report is None or session.plan is None:
            return
        status, rows = session.status(), layer_rows(session.report, session.plan, session.channels)
        summary, report, plan_eval = status.summary, status.canary, status.eval
        self.query_one(OverviewPane).show(session.report, rows)
        text_name = session.eval_text_name
        # the Plan tab's one line names the text too, within 80 columns (perplexity and KL only)
        reshape = session.reshape_preview()
        plan_pane = self.query_one(PlanPane)
        plan_pane.show(rows, summary, session.candidate.name, plan_eval, session.layer_kl, text_name, reshape)
        self.query_one(TensorsPane).show(session.report, set(summary.from_candidate))
        canary = self.query_one(CanaryPane)
        canary.show(f"keep {summary.keep_text}", report, self._steps_text(), eval_text(plan_eval, text_name))
        name = session.candidate.name
        self.query_one(StatusLine).show(lambda width: status_text(summary, report, plan_eval, name, width, text_name))

    def _searching(self, text: Text) -> None:
        """A search's live line on the Canary tab, until its job ends (on_worker_state_changed),
        with the plan's verdicts as they stand (the run before this one is in them). The worker
        waits in call_from_thread meanwhile, so the canary's results do not change under it."""
        self.searching = text
        self.refresh_plan()

    def _steps_text(self) -> Text:
        session = self.session
        if self.searching is not None:
            return self.searching
        if session.auto_budget is None:
            return auto_steps_text(session.auto_steps)
        return budget_steps_text(session.auto_steps, sorted(session.auto_found or ()), session.auto_budget.text())

    # --- jobs ---------------------------------------------------------------------------

    @property
    def job(self) -> Job | None:
        """The running job, None when none runs."""
        return self.jobs.job

    def start_job(self, name: str, work: Work[Result], done: Done[Result]) -> bool:
        key = JOB_KEYS.get(name)
        started = self.jobs.start(name, work, done, again=f"press {key}" if key else "start it")
        self._draw_job()
        return started

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        job = self.jobs.ended(event)
        if job is None:
            return
        self._draw_job()
        self._close_quit_question(job)
        if self.searching is not None:  # the search is over, however it ended: its result shows instead
            self.searching = None
            self.refresh_plan()
        if event.state == WorkerState.SUCCESS:
            if job.stopping:
                self.notify(f"The {job.name} ended before it could stop: its result is kept", timeout=5)
            try:
                job.done(event.worker.result)
            except Exception as exc:  # showing a result must not take the app down
                self.show_error(f"showing the {job.name} result failed", f"{type(exc).__name__}: {exc}")
        elif event.state == WorkerState.ERROR:
            self._job_failed(job, event.worker.error)
        else:
            self._cancelled(job, "")
        if job.name == "hashing" and self.session.report is None:
            self.query_one("#summary", Static).update("Hashing stopped before the end. Press r to hash again.")
            self.query_one(StatusLine).show(lambda width: "not compared: hashing stopped (r hashes again)")

    def _cancelled(self, job: Job, what_is_left: str) -> None:
        """Said when the job has really stopped (x only asked it to): a key refused meanwhile
        can be pressed now."""
        now = f"; {job.refused} now" if job.refused else ""
        self.notify(f"{job.name} cancelled{what_is_left}{now}", timeout=5 if now else 4)

    def _job_failed(self, job: Job, error: BaseException | None) -> None:
        if isinstance(error, Cancelled):
            self._cancelled(job, CANCELLED.get(job.name, ""))
            return
        # A canary or eval that ends in an error never ran its checks: it did not "fail" them.
        title = f"{job.name} {'failed' if job.name in ('write', 'prune') else 'could not run'}"
        missing = missing_extra(error, f"the {job.name}") if isinstance(error, ImportError) else None
        if missing is not None:  # a light install: the CLI's one line, never the exception
            self.show_error(f"{job.name} could not run", str(missing))
        elif isinstance(error, SurgeonError):
            self.show_error(title, str(error) + TUI_HINTS.get(error.option or "", ""))
        else:
            self.show_error(title, f"{type(error).__name__}: {error}")

    def _draw_job(self) -> None:
        """Now, not at the bar's next tick: a job that starts or ends shows at once."""
        for bar in self.query(JobBar):  # none when the app is closing: its widgets go before its workers
            bar.draw()

    def action_cancel_job(self) -> None:
        """Asks the job to stop; the job bar says "cancelling…" until it has, and a notice
        says when it has (_cancelled), which can take seconds (a load of torch or a model)."""
        stopping = self.job is not None and self.job.stopping
        job = self.jobs.cancel()
        if job is None:
            self.notify("Nothing is running", timeout=2)
        elif stopping:
            self.notify(f"The {job.name} is already stopping; it stops at its next step", timeout=3)
        else:
            self.notify(f"Cancelling the {job.name}: it stops at its next step, and a notice says when", timeout=4)
        self._draw_job()

    # --- plan ---------------------------------------------------------------------------

    def _need_report(self) -> bool:
        if self.session.plan is None:
            self.notify("Still hashing the checkpoints", severity="warning")
        return self.session.plan is not None

    def _need_folders(self, action: str) -> bool:
        """The canary, eval, write and prune read whole checkpoints; a pair of single
        .safetensors files is only compared (the Overview, Tensors and Plan tabs work)."""
        files = any(path.is_file() for path in (self.session.base, self.session.candidate))
        if files:
            message = f"{action} needs checkpoint folders: a single .safetensors file is only compared"
            self.notify(message, severity="error", timeout=6, markup=False)
        return not files

    def _need_models(self, action: str) -> bool:
        """The canary, eval, auto plans and prune run a model: a light install says what to
        install, in the CLI's words, before any question or job."""
        missing = missing_models(action)
        if missing is not None:
            self.show_error(f"{action.removeprefix('the ')} could not run", str(missing))
        return missing is None

    def toggle_layer(self, layer: int) -> None:
        """A toggle that changes nothing (an identical layer) says so in a toast, not a dialog."""
        self._plan_change(lambda: self.session.toggle(layer), quiet=True)

    def plan_range(self, how: RangeEdit, spec: str) -> None:
        if not spec.strip():
            self.notify("Type layers first, e.g. 4-59", severity="warning")
            return
        self._plan_change(lambda: self.session.edit_range(how, spec))

    def action_toggle_non_layer(self) -> None:
        self._plan_change(self.session.toggle_non_layer)

    def action_undo(self) -> None:
        if self._need_report() and not self.session.undo():
            self.notify("Nothing to undo", timeout=2)
        self.refresh_plan()

    def action_redo(self) -> None:
        if self._need_report() and not self.session.redo():
            self.notify("Nothing to redo", timeout=2)
        self.refresh_plan()

    def _plan_change(self, change: Callable[[], None], quiet: bool = False) -> None:
        if not self._need_report():
            return
        try:
            change()
        except SurgeonError as exc:
            if quiet:
                self.notify(inert(exc), title="Plan not changed", severity="warning", timeout=4, markup=False)
            else:
                self.show_error("Plan not changed", str(exc))
            return
        self.refresh_plan()

    # --- canary -------------------------------------------------------------------------

    def action_canary(self) -> None:
        if not (self._need_report() and self._need_folders("the canary") and self._need_models("the canary")):
            return
        self.action_show_tab("canary")
        session, key = self.session, self.session.plan_key()
        if key in session.canary_reports:
            self.notify("This plan's canary is already known", timeout=2)
            return
        self.start_job(
            "canary", lambda job: session.run_canary(key, job.progress, job.cancel), lambda _: self.refresh_plan()
        )

    def action_auto_plan(self) -> None:
        """salvage --auto in memory: the largest set of changed layers whose canary passes,
        by bisection over prefixes and then greedy addition; the answer becomes the plan."""
        if not (self._need_report() and self._need_folders("the auto plan") and self._need_models("the auto plan")):
            return
        self.action_show_tab("canary")
        session = self.session

        def before_run(steps: list[SearchStep], layers: list[int], runs_after: int) -> None:
            self.call_from_thread(self._searching, search_live_text(steps, layers, runs_after))

        self.start_job(
            "auto plan", lambda job: session.canary_search(job.progress, job.cancel, before_run), self._auto_done
        )

    def _auto_done(self, plan: PlanSearch) -> None:
        self.session.adopt(plan)
        self.refresh_plan()
        kept = layer_ranges(plan.keep) or "none"
        self.notify(f"{len(plan.steps)} canary runs; the plan is now keep {kept} (ctrl+z: the plan before)", timeout=6)

    # --- eval ---------------------------------------------------------------------------

    def action_eval(self) -> None:
        """Teacher-forced eval of the current plan against the base, and (once per pair) of
        each changed layer alone: which layers cost quality. In memory; nothing is written."""
        if not (self._need_report() and self._need_folders("the eval") and self._need_models("the eval")):
            return
        session, key = self.session, self.session.plan_key()
        if session.eval_known(key):
            self.notify("This plan's eval is already known", timeout=2)
            return
        self.start_job(
            "eval",
            lambda job: session.evaluate(key, job.progress, job.cancel),
            lambda found: self._evaluated(key, found),
        )

    def _evaluated(self, key: Plan, found: dict[Plan, EvalSummary]) -> None:
        """Shows the results; `key` is the plan evaluated, which the user may have changed since."""
        session = self.session
        session.store_eval(found)
        self.refresh_plan()
        message = f"Keep {layer_ranges(sorted(key)) or 'none'}: {eval_numbers(session.eval_reports[key])}"
        layer_kl = session.layer_kl
        if layer_kl:
            worst = max(layer_kl, key=lambda n: kl_order(layer_kl[n]))
            message += f"\nLayer {worst} costs most alone (KL {kl_format(layer_kl[worst])})"
        self.notify(message, timeout=6)

    def action_budget_plan(self) -> None:
        """Auto plan by a quality budget: the largest set of changed layers whose composed
        model stays within the budget on the eval text, confirmed by the canary."""
        if self._need_report() and self._need_folders("the budget plan") and self._need_models("the budget plan"):
            self.push_screen(BudgetDialog(), self._budget_chosen)

    def _budget_chosen(self, limits: tuple[float | None, float | None] | None) -> None:
        if limits is None:
            return
        budget = QualityBudget(*limits)
        try:
            budget.validate()
        except SurgeonError as exc:
            self.show_error("Quality budget", str(exc))
            return
        self.action_show_tab("plan")
        session = self.session

        def doing(steps: list[SearchStep], what: str) -> None:
            self.call_from_thread(self._searching, budget_live_text(steps, what, budget.text()))

        def work(job: Job) -> tuple[PlanSearch, dict[Plan, EvalSummary], QualityBudget]:
            return *session.budget_search(budget, job.progress, job.cancel, doing), budget

        self.start_job("budget plan", work, self._budget_done)

    def _budget_done(self, result: tuple[PlanSearch, dict[Plan, EvalSummary], QualityBudget]) -> None:
        plan, found, budget = result
        self.session.store_eval(found)
        self.session.adopt(plan, budget)
        self.refresh_plan()
        self.notify(f"{budget.text()}: keeping layers {layer_ranges(plan.keep) or 'none'}", timeout=6)

    # --- write --------------------------------------------------------------------------

    def action_write(self) -> None:
        if not (self._need_report() and self._need_folders("write")):
            return
        session = self.session
        status = session.status()
        summary = status.summary
        if summary.problems:
            self.show_error("Cannot write this pair", "\n".join(summary.problems))
            return
        default = session.last_output or Path.cwd() / f"{session.candidate.name}-salvaged"
        # The verdicts first: at 80x24 the plan's details scroll in a box of 7 lines.
        description = _canary_note(status.canary)
        description.append("\n").append_text(eval_text(status.eval, session.eval_text_name))
        reshape = session.reshape_preview()
        offer = reshape_text(reshape) if reshape.problem is None else None
        if offer is not None:  # ticking Reshape slices the removed heads out of what is written
            description.append("\n").append_text(offer).append(" (tick Reshape)", style="dim")
        description.append("\n").append_text(plan_text(summary, session.candidate.name))
        inputs = [session.base, session.candidate]
        self.push_screen(WriteDialog(default, description, inputs, offer), self._write_confirmed)

    def _write_confirmed(self, answer: tuple[Path, bool, bool] | None) -> None:
        if answer is None:
            return
        request = self.session.write_request(*answer)
        self.start_job("write", lambda job: request.run(job.progress, job.cancel), self._written)

    def _written(self, report: VerifyReport) -> None:
        self.session.last_verify = report
        title = "Written and verified" if report.ok else "Written, but verify found discrepancies"
        self.push_screen(MessageDialog(title, verify_text(report), error=not report.ok))

    # --- prune --------------------------------------------------------------------------

    def action_prune(self) -> None:
        """Checks the Prune tab's options, then asks, naming the folder it will write."""
        if not (self._need_folders("prune") and self._need_models("the prune")):
            return
        pane, session = self.query_one(PrunePane), self.session
        num_layers = session.plan.num_layers if session.plan else None
        try:
            options, output = pane.request(session.base, num_layers, session.tokenizer)
        except SurgeonError as exc:
            self.show_error("Prune options", str(exc))
            return
        heads = pane.heads_text().plain  # what the fraction comes to, in whole heads
        question = (
            f"Prune {session.base.name} into a new folder:\n{output}\n\nfraction {options.prune_frac:g}, "
            f"layers {options.layers}, importance {options.importance}, heal {options.heal}, mode {options.mode}"
            + (f", MLP channels {options.ffn_frac:g} by {options.ffn_importance}." if options.ffn_frac else ".")
            + (f"\n{heads[0].upper()}{heads[1:]}." if heads else "")
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self._start_prune(pane, options, output)
            else:
                self.notify("Prune not started; nothing was written", timeout=3)

        self.push_screen(ConfirmDialog(question, "Start prune", "Cancel"), answered)

    def _start_prune(self, pane: PrunePane, options: PruneOptions, output: Path) -> None:
        base = self.session.base

        def work(job: Job) -> PruneResult:
            job.progress.start(loading_phase("prune"), 0)
            from surgeon.prune.engine import prune  # torch: loaded by the first prune, not at start

            return prune(
                base,
                output,
                options,
                progress=job.progress,
                cancel=job.cancel,
                on_layer_done=lambda result: self.call_from_thread(pane.layer_done, result),
                on_phase=lambda layer, phase: self.call_from_thread(pane.phase, layer, phase),
            )

        pane.reset_progress()
        self.start_job("prune", work, self._pruned)

    def _pruned(self, result: PruneResult) -> None:
        output = Path(result.output)

        def answered(open_it: bool | None) -> None:
            if open_it:  # after the dialog has gone and handed focus back, or it would pull the tab back
                self.call_after_refresh(self.open_candidate, output)
            else:
                self.notify(f"Pruned into {inert(output)}; the candidate is unchanged", timeout=5, markup=False)

        question = (
            f"Pruned into {output}.\n\nOpen it as the candidate? The current plan, its undo history "
            f"and canary results belong to {self.session.candidate.name} and are dropped."
        )
        self.push_screen(ConfirmDialog(question, "Open as candidate", "Keep the current candidate"), answered)

    def open_candidate(self, candidate: Path) -> None:
        self.session.open_candidate(candidate)
        self.sub_title = inert(f"{self.session.base.name} → {self.session.candidate.name}")
        self.action_show_tab("overview")
        self.load_pair()

    # --- what the panes ask for -------------------------------------------------------

    @on(LayerMap.ToggleRequested)
    def _toggle_requested(self, event: LayerMap.ToggleRequested) -> None:
        self.toggle_layer(event.layer)

    @on(PlanPane.RangeRequested)
    def _range_requested(self, event: PlanPane.RangeRequested) -> None:
        self.plan_range(event.how, event.spec)

    @on(TensorsPane.DetailRequested)
    def _detail_requested(self, event: TensorsPane.DetailRequested) -> None:
        self.open_tensor(event.name)

    @on(CanaryPane.RunRequested)
    def _canary_requested(self) -> None:
        self.action_canary()

    @on(CanaryPane.AutoPlanRequested)
    def _auto_plan_requested(self) -> None:
        self.action_auto_plan()

    @on(CanaryPane.CancelRequested)
    def _cancel_requested(self) -> None:
        self.action_cancel_job()

    @on(PrunePane.PruneSubmitted)
    def _prune_submitted(self) -> None:
        self.action_prune()

    # --- navigation, dialogs, quitting --------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._focus_tab(tab)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if isinstance(self.focused, SearchBar):  # "3" then "/" typed at once: the search started meanwhile
            return
        self._focus_tab(event.pane.id)

    def action_type_here(self) -> None:
        """/ searches the tab's table (the Tensors tab's: its filter box)."""
        tab = TAB.get(self.query_one(TabbedContent).active)
        if tab is not None and tab.type_here:
            self.query_one(tab.type_here).focus()
        elif tab is not None and tab.search:
            self.query_one(SearchBar).open(self.query_one(tab.focus, DataTable))
        else:
            self.notify("This tab has no table to search", timeout=2)

    def action_leave_box(self) -> None:
        self._focus_tab(self.query_one(TabbedContent).active)

    def _focus_tab(self, tab: str | None) -> None:
        """Keys go to the tab's main widget, not the tab strip: space on a map just works."""
        if tab in TAB:  # now, not after a refresh: a key typed right after the tab key lands here
            self.screen.set_focus(self.query_one(TAB[tab].focus))

    def open_tensor(self, name: str) -> None:
        report = self.session.report
        tensor = next((t for t in report.tensors if t.name == name), None) if report else None
        if tensor is not None:
            self.push_screen(TensorDetail(tensor))

    def show_error(self, title: str, message: str) -> None:
        self.push_screen(MessageDialog(title, message, error=True))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Quits at once unless a write or a prune would be lost: those ask, then cancel and
        wait for the engine to clean up before the app goes."""
        job = self.job
        if job is None or job.name not in ("write", "prune"):
            if job is not None:
                job.cancel.set()
            self.exit()
            return

        def answered(quit_now: bool | None) -> None:
            if quit_now:
                job.cancel.set()
                self.run_worker(self._exit_after(job), exclusive=False)

        question = f"A {job.name} is running. Cancel it and quit? A cancelled {job.name} leaves nothing behind."
        job.quit_question = ConfirmDialog(question, f"Cancel {job.name} and quit")
        self.push_screen(job.quit_question, answered)

    def _close_quit_question(self, job: Job) -> None:
        """A job that ends while "cancel it and quit?" is up makes the question moot: it goes,
        and the job's own result (a verify dialog, an error) is what the user sees."""
        question = job.quit_question
        if question is not None and question in self.screen_stack:
            question.dismiss(None)
            self.notify(f"The {job.name} finished before quitting; the app stays open", timeout=5)

    async def _exit_after(self, job: Job) -> None:
        with contextlib.suppress(WorkerFailed):  # a cancelled write ends by raising Cancelled
            if job.worker is not None:
                await job.worker.wait()
        self.exit()

    def _range_box(self) -> None:
        self.action_show_tab("plan")
        self.query_one("#plan-range").focus()

    def _toggle_selected(self) -> None:
        """The layer under the cursor of the map on screen (the Plan tab's, else the Overview's)."""
        active = self.query_one(TabbedContent).active
        layer = self.query_one("#plan-map" if active == "plan" else "#layer-map", LayerMap).selected_layer()
        if layer is not None:
            self.toggle_layer(layer)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for tab in TABS:
            yield SystemCommand(tab.command, tab.help, functools.partial(self.action_show_tab, tab.id))
        commands = [
            ("Run canary", "Canary on the current plan, in memory", self.action_canary),
            ("Auto plan", "Search the largest set of layers that passes the canary", self.action_auto_plan),
            ("Evaluate plan", "Perplexity, KL and top-1 of the plan and of each layer alone (e)", self.action_eval),
            (
                "Auto plan by quality budget",
                "The largest set of layers within a KL budget, confirmed by the canary",
                self.action_budget_plan,
            ),
            ("Write plan", "Write the current plan to a folder and verify it", self.action_write),
            ("Start prune", "Prune the base with the Prune tab's options", self.action_prune),
            ("Roll back a layer range", "Type layers such as 4-59 on the Plan tab", self._range_box),
            ("Toggle the selected layer", "Keep it from the candidate or roll it back", self._toggle_selected),
            ("Undo plan change", "Undo the last rollback-plan change", self.action_undo),
            ("Redo plan change", "Redo a rollback-plan change", self.action_redo),
            ("Toggle non-layer tensors", "Embeddings, final norm, lm_head", self.action_toggle_non_layer),
            ("Cancel job", "Stop the running hash, canary, eval, prune or write", self.action_cancel_job),
            ("Rehash", "Hash and compare base and candidate again (r)", self.action_rehash),
            ("Help", "Keys and symbols", self.action_help),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)


def _canary_note(report: CanaryReport | None) -> Text:
    """The write dialog's first line: the canary's verdict on the plan to write."""
    if report is None:
        return Text("The canary has not been run on this plan (c on the Canary tab).", style="yellow")
    if report.tally.borderline:  # a pass, one failing prompt from a fail
        return Text("The canary passed on this plan, borderline: one more failure fails it.", style="yellow")
    if report.passed:
        return Text("The canary passed on this plan.", style="green")
    return Text("The canary FAILED on this plan.", style="bold red")


def missing_models(what: str) -> SurgeonError | None:
    """The CLI's line for a light install (`what` needs torch ...: pip install ...), or None
    when the modules that run a model are there. find_spec only looks for them: importing
    torch here would hold the screen for seconds."""
    for module in MODEL_MODULES:
        if importlib.util.find_spec(module) is None:
            return missing_extra(ModuleNotFoundError(f"No module named {module!r}", name=module), what)
    return None
