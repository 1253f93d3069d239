"""`surgeon tui BASE QUANT`: a checkpoint against a GGUF quant of it, read only.

Two tabs over the report of surgeon.diff.quant.diff_quant: the Overview says what the
terminal report's header says (the one-line answer, both sides, the transforms undone, the
tensors per verdict) with its table of tensor families, and the Tensors tab lists every
tensor with its storage type, NMSE, bound and verdict, filtered and sorted, the one under
the cursor detailed below the table (an attention projection: its NMSE per head). A quant
pair has no rollback plan, canary, eval, prune or write: their keys say so on the status
line. The diff is a job of the same JobRunner as the pair app's hashing, with its progress
bar and cancel key.

Every string from a file (tensor names, the GGUF's name, notes that quote them) is shown
as `Text(inert(...))`, never parsed as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Input, Label, Select, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from surgeon.diff.engine import natural_key
from surgeon.diff.quant import QuantOptions, diff_quant
from surgeon.diff.quant_report import (
    COMPARED,
    VERDICT_STYLE,
    VERDICTS,
    QuantReport,
    QuantTensor,
    family_rows,
    summary_line,
)
from surgeon.diff.render_quant import bound_cell, counted_phrase, family_cells, nmse_cell, quant_kind, size_text
from surgeon.errors import Cancelled, SurgeonError
from surgeon.format.checkpoint import Checkpoint, public_name
from surgeon.text import inert

from .dialogs import MessageDialog
from .jobs import Job, JobBar, JobRunner
from .panes import StatusLine, fill_table
from .views import FoldedName, name_lines

READ_ONLY = "a quant pair is read-only: no plan, canary, eval, prune or write"
READ_ONLY_KEYS = {"c": "canary", "a": "auto plan", "e": "eval", "w": "write", "p": "prune"}
# How far along its bound a tensor is, for the "bound" sort: past 1 is beyond it, the
# undefined and the uncompared last of the compared.
SEVERITY = ("differs", "shape-mismatch", "base-only", "quant-only", "unverified", "within")
SORTS: dict[str, Callable[[QuantTensor], tuple]] = {
    "name": lambda t: (natural_key(t.name),),
    "verdict": lambda t: (SEVERITY.index(t.verdict), natural_key(t.name)),
    "NMSE/bound": lambda t: (-_ratio(t), natural_key(t.name)),
    "type": lambda t: (t.storage or "~", natural_key(t.name)),
}
VERDICT_CHOICES = [("all", "all"), ("not within", "not-within")] + [(v, v) for v in VERDICTS]
NOT_COMPARED = tuple(v for v in VERDICTS if v not in COMPARED)
TENSOR_COLUMNS = ("tensor", "type", "NMSE", "bound", "verdict")
FAMILY_COLUMNS = ("family", "type", "NMSE", "bound", "beyond in")
HEAD_CELL = 12  # "#12 1.2e-05" and a space: the per-head values in columns
HELP = (
    "A checkpoint against a GGUF quant of it, read only.\n\n"
    "1  Overview: the answer, both sides, counts per verdict, families\n"
    "2  Tensors: every tensor's type, NMSE, bound and verdict\n"
    "   /  filter by words in the name (the box beside it: by verdict)\n"
    "   s  next sort: name, verdict, NMSE/bound, type\n"
    "   enter  the tensor's detail (attention: NMSE per head)\n"
    "x  cancel the diff   r  diff again   q  quit\n\n"
    "NMSE = sum((quant - base)^2) / sum(base^2); the bound is the measured error of the "
    "storage type. The plan, canary, eval, prune and write keys do nothing here: "
    "`surgeon diff BASE QUANT --markdown` writes the card section."
)


def _ratio(t: QuantTensor) -> float:
    if t.verdict not in ("within", "differs", "unverified"):
        return -1.0
    if t.nmse is None:
        return float("inf")
    if not t.bound:
        return 0.0 if t.nmse == 0 or t.bound is None else float("inf")
    return t.nmse / t.bound


def verdict_text(verdict: str) -> Text:
    return Text(verdict, style=VERDICT_STYLE.get(verdict, ""))


def counts_text(report: QuantReport) -> Text:
    """Tensors per verdict, each in its colour, those with none dimmed: the compared on one
    line, the rest on another (all six on one line took 81 columns)."""
    text = Text()
    for lead, verdicts in (("compared     ", COMPARED), ("not compared ", NOT_COMPARED)):
        text.append("\n" if text else "").append(lead, style="dim")
        for index, verdict in enumerate(verdicts):
            n = report.count(verdict)
            text.append(", " if index else "").append(f"{n} ", style="bold" if n else "dim")
            text.append(verdict, style=VERDICT_STYLE[verdict] if n else "dim")
    return text


def sides_text(report: QuantReport) -> Table:
    """Both sides and what was undone, a label column beside the values: a long path folds
    within its own column (as plain text it jumped to the next line whole, then folded)."""
    files = f"{report.other.shards} file{'s' if report.other.shards > 1 else ''}, {size_text(report.other.bytes)}"
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("base", Text(inert(report.base.source)))
    grid.add_row("quant", Text(inert(report.other.source)))
    grid.add_row("", Text(f"{quant_kind(report)}, {files}", style="dim"))
    if len(report.files) > 1:
        grid.add_row("", Text(", ".join(inert(f.name) for f in report.files), style="dim"))
    if report.transforms:
        undone = ", ".join(counted_phrase(inert(kind), n) for kind, n in report.transforms.items())
        grid.add_row("undone", Text(undone, style="dim"))
    return grid


def tensor_cells(t: QuantTensor) -> list[Text]:
    return [
        FoldedName(inert(t.name)),
        Text(inert(t.storage or "-")),
        Text(nmse_cell(t), justify="right"),
        Text(bound_cell(t), justify="right"),
        verdict_text(t.verdict),
    ]


def tensor_detail(t: QuantTensor, width: int) -> Text:
    """What is known of one tensor, for the panel under the table and its dialog: the verdict,
    the numbers, the note, and for an attention projection its NMSE per head, `width` wide."""
    text = Text(inert(t.name), style="bold")
    text.append("\n").append_text(verdict_text(t.verdict))
    if t.storage:
        text.append(f" · {inert(t.storage)}")
    if t.verdict in ("within", "differs", "unverified"):
        text.append(f" · NMSE {nmse_cell(t)}, bound {bound_cell(t)}")
    if t.rows is not None:
        text.append(f" · {t.rows_compared} of {t.rows} rows")
    if t.shape is not None:
        text.append(f" · {inert(t.base_dtype or '?')} {'x'.join(map(str, t.shape))}", style="dim")
    if t.note:
        text.append("\n").append(inert(t.note), style="dim")
    heads = t.heads
    if heads is not None:
        bound = _nmse_cell_value(heads.bound)
        beyond = f"{len(heads.beyond)} beyond" if heads.beyond else "none beyond"
        text.append(
            f"\n{heads.projection}: NMSE per head over its {heads.axis} (of {heads.num_heads}, "
            f"bound {bound}, {beyond})",
        )
        per_line = max(1, width // HEAD_CELL)
        for index, value in enumerate(heads.nmse):
            text.append("\n" if index % per_line == 0 else "")
            cell = f"#{index} {_nmse_cell_value(value, zero='base 0')}"
            style = "bold yellow" if index in heads.beyond else ""
            text.append(cell.ljust(HEAD_CELL), style=style)
    return text


def _nmse_cell_value(value: float | None, zero: str = "none") -> str:
    if value is None:
        return zero
    return "0" if value == 0 else format(value, ".2g")


class QuantOverview(Vertical):
    """The answer and the sides at the top, the families table in the rest: the table scrolls
    itself (at 80x24, in a scrolling pane, its cursor went below the screen's edge)."""

    DEFAULT_CSS = """
    QuantOverview { padding: 0 1; }
    #quant-summary { height: auto; text-style: bold; }
    #quant-sides { height: auto; margin-top: 1; }
    #quant-counts { height: auto; }
    QuantOverview .section { text-style: bold; }
    #quant-families { height: 1fr; min-height: 4; }
    QuantOverview.waiting #quant-families-label, QuantOverview.waiting #quant-families { display: none; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Comparing the base with the quant...", id="quant-summary")
        yield Static("", id="quant-sides")
        yield Static("", id="quant-counts")
        yield Label("Tensor families by layer", classes="section", id="quant-families-label")
        yield DataTable(id="quant-families", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.add_class("waiting")

    def waiting(self, line: str) -> None:
        self.add_class("waiting")
        self.query_one("#quant-summary", Static).update(Text(line))

    def show(self, report: QuantReport) -> None:
        self.remove_class("waiting")
        style = "green" if report.made_from else "yellow"
        self.query_one("#quant-summary", Static).update(Text(inert(summary_line(report)), style=style))
        self.query_one("#quant-sides", Static).update(sides_text(report))
        self.query_one("#quant-counts", Static).update(counts_text(report))
        rows = []
        for row in family_rows(report):
            label = row.family if row.stack is None or row.stack == report.main_stack else f"{row.stack}.{row.family}"
            cells = [Text(inert(label)), Text(inert("+".join(row.storage) or "-")), *family_cells(row)]
            rows.append((f"{row.stack}:{row.family}", [c if isinstance(c, Text) else Text(c) for c in cells]))
        fill_table(self.query_one("#quant-families", DataTable), FAMILY_COLUMNS, rows)


class QuantTensors(Vertical):
    DEFAULT_CSS = """
    #quant-filters { height: 3; }
    #quant-filter { width: 1fr; }
    #quant-verdict { width: 18; }
    #quant-table { height: 1fr; }
    #quant-count { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #quant-detail-box { height: auto; max-height: 6; padding: 0 1; background: $boost; }
    #quant-detail { height: auto; }
    """
    BINDINGS = [Binding("s", "next_sort", "Sort"), Binding("enter", "detail", "Detail", show=False)]

    class DetailRequested(Message):
        """Open a tensor's whole detail in a dialog."""

        def __init__(self, tensor: QuantTensor):
            super().__init__()
            self.tensor = tensor

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.tensors: list[QuantTensor] = []
        self.shown: list[QuantTensor] = []
        self.cells: dict[str, list[Text]] = {}  # each tensor's row, built once per report
        self.widths: list[int] = []  # each column's widest cell over every tensor: fixed as the filter changes
        self.sort = "name"

    def compose(self) -> ComposeResult:
        with Horizontal(id="quant-filters"):
            yield Input(placeholder="filter: words in the name", id="quant-filter")
            yield Select(VERDICT_CHOICES, value="all", allow_blank=False, id="quant-verdict")
        yield DataTable(id="quant-table", cursor_type="row", zebra_stripes=True)
        yield Static("Comparing...", id="quant-count")
        with VerticalScroll(id="quant-detail-box"):
            yield Static("", id="quant-detail")

    def show(self, report: QuantReport) -> None:
        self.tensors = report.tensors
        self.cells = {t.name: tensor_cells(t) for t in report.tensors}
        rows = list(self.cells.values())
        self.widths = [max([cell_len(c), *(r[i].cell_len for r in rows)]) for i, c in enumerate(TENSOR_COLUMNS)]
        self.refilter()

    @on(Input.Changed, "#quant-filter")
    @on(Select.Changed, "#quant-verdict")
    def _filter_changed(self) -> None:
        self.refilter()

    def action_next_sort(self) -> None:
        order = list(SORTS)
        self.sort = order[(order.index(self.sort) + 1) % len(order)]
        self.refilter()

    def refilter(self) -> None:
        if not self.widths:  # no report yet (the filter boxes say they changed as they mount)
            return
        words = self.query_one("#quant-filter", Input).value.lower().split()
        verdict = str(self.query_one("#quant-verdict", Select).value)
        shown = [
            t
            for t in self.tensors
            if all(w in t.name.lower() for w in words)
            and (verdict == "all" or t.verdict == verdict or (verdict == "not-within" and t.verdict != "within"))
        ]
        self.shown = sorted(shown, key=SORTS[self.sort])
        self._draw()

    def _draw(self) -> None:
        table = self.query_one("#quant-table", DataTable)
        widths = list(self.widths)
        room = (table.size.width or self.app.size.width) - table.styles.scrollbar_size_vertical
        others = sum(widths[1:]) + 2 * len(TENSOR_COLUMNS)
        widths[0] = max(16, min(widths[0], room - others))  # the name folds onto more lines below that
        table.clear(columns=True)
        for label, width in zip(TENSOR_COLUMNS, widths, strict=True):
            table.add_column(label, key=label, width=width)
        for t in self.shown:
            table.add_row(*self.cells[t.name], key=t.name, height=name_lines(t.name, widths[0]))
        self._show_count()
        self._show_detail()

    def on_resize(self) -> None:
        if self.tensors:
            self._draw()

    def _show_count(self) -> None:
        table = self.query_one("#quant-table", DataTable)
        row = f"; row {table.cursor_row + 1}" if self.shown else ""
        line = f"{len(self.shown)} of {len(self.tensors)} tensors, sorted by {self.sort}{row} (s: sort, enter: detail)"
        self.query_one("#quant-count", Static).update(line)

    def selected(self) -> QuantTensor | None:
        table = self.query_one("#quant-table", DataTable)
        if not self.shown or not table.row_count:
            return None
        return self.shown[min(table.cursor_row, len(self.shown) - 1)]

    def _show_detail(self) -> None:
        tensor = self.selected()
        box = self.query_one("#quant-detail-box")
        box.display = tensor is not None
        if tensor is not None:
            width = (box.content_region.width or self.app.size.width - 2) - 1
            self.query_one("#quant-detail", Static).update(tensor_detail(tensor, width))

    @on(DataTable.RowHighlighted, "#quant-table")
    def _highlighted(self) -> None:
        self._show_count()
        self._show_detail()

    @on(DataTable.RowSelected, "#quant-table")
    def _selected(self) -> None:
        self.action_detail()

    def action_detail(self) -> None:
        tensor = self.selected()
        if tensor is not None:
            self.post_message(self.DetailRequested(tensor))


TABS = (("overview", "1 Overview", "#quant-families"), ("tensors", "2 Tensors", "#quant-table"))


class QuantApp(App):
    """BASE against a GGUF quant of it: the Overview and Tensors tabs, nothing to change."""

    TITLE = "surgeon"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("1", "show_tab('overview')", "Overview", show=False),
        Binding("2", "show_tab('tensors')", "Tensors", show=False),
        Binding("slash", "type_here", "Filter", show=False),
        Binding("escape", "leave_box", "Leave box", show=False),
        Binding("x", "cancel_job", "Cancel", show=False),
        Binding("r", "rediff", "Diff again", show=False),
        *(Binding(key, f"read_only('{what}')", what, show=False) for key, what in READ_ONLY_KEYS.items()),
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, base: Checkpoint, quant: str | Checkpoint, options: QuantOptions = QuantOptions()):
        super().__init__()
        self.base, self.quant, self.options = base, quant, options
        self.report: QuantReport | None = None
        self.jobs = JobRunner(self)

    def compose(self) -> ComposeResult:
        yield Header()
        yield JobBar(self.jobs, id="job-bar")
        with TabbedContent(initial="overview"):
            with TabPane(TABS[0][1], id="overview"):
                yield QuantOverview(id="quant-overview")
            with TabPane(TABS[1][1], id="tensors"):
                yield QuantTensors(id="quant-tensors")
        yield StatusLine(id="status-line")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = inert(f"{public_name(self.base)} → {self.quant_name} (quant, read-only)")
        self._focus_tab("overview")
        self.run_diff()

    @property
    def quant_name(self) -> str:
        if self.report is not None:
            return self.report.other.name
        return public_name(self.quant) if isinstance(self.quant, Checkpoint) else Path(self.quant).name

    # --- the diff -----------------------------------------------------------------------

    @property
    def job(self) -> Job | None:
        return self.jobs.job

    def run_diff(self) -> None:
        base, quant, options = self.base, self.quant, self.options

        def work(job: Job) -> QuantReport:
            return diff_quant(base, quant, options, progress=job.progress, cancel=job.cancel)

        if self.jobs.start("diff", work, self._diffed, again="press r"):
            self._draw_job()
            if self.report is not None:  # r again: the report shown stays until the new one replaces it
                return
            self.query_one(QuantOverview).waiting("Comparing every tensor of the quant with the base...")
            self._status(f"comparing {public_name(self.base)} with {self.quant_name}, read-only (x cancels)")

    def action_rediff(self) -> None:
        self.run_diff()

    def _diffed(self, report: QuantReport) -> None:
        self.report = report
        self.query_one(QuantOverview).show(report)
        self.query_one(QuantTensors).show(report)
        self._status_report()
        self.notify(f"{len(report.tensors)} tensors compared", timeout=3)

    def _status_report(self) -> None:
        report = self.report
        if report is None:
            return
        counted = len(report.counted)
        within = sum(1 for t in report.counted if t.verdict == "within")
        self._status(f"read-only quant pair: {within} of {counted} tensors within their bounds")

    def _status(self, line: str | Text) -> None:
        text = line if isinstance(line, Text) else Text(line)
        self.query_one(StatusLine).show(lambda width: text)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        job = self.jobs.ended(event)
        if job is None:
            return
        self._draw_job()
        if event.state == WorkerState.SUCCESS:
            job.done(event.worker.result)
            return
        error = event.worker.error
        if event.state == WorkerState.ERROR and not isinstance(error, Cancelled):
            message = str(error) if isinstance(error, SurgeonError) else f"{type(error).__name__}: {error}"
            self.push_screen(MessageDialog("The diff could not run", message, error=True))
            stopped = "The diff could not run. Press r to try again."
        else:
            self.notify("diff cancelled: nothing is compared (r diffs again)", timeout=4)
            stopped = "The diff was cancelled before the end. Press r to diff again."
        if self.report is None:
            self.query_one(QuantOverview).waiting(stopped)
            self.query_one("#quant-count", Static).update(stopped)
            self._status("not compared (r diffs again) · read-only quant pair")

    def _draw_job(self) -> None:
        for bar in self.query(JobBar):
            bar.draw()

    def action_cancel_job(self) -> None:
        job = self.jobs.cancel()
        if job is None:
            self.notify("Nothing is running", timeout=2)
        else:
            self.notify(f"Cancelling the {job.name}: it stops at its next step", timeout=3)
        self._draw_job()

    # --- read-only ----------------------------------------------------------------------

    def action_read_only(self, what: str) -> None:
        self._status(Text(f"{what}: {READ_ONLY}", style="yellow"))
        self.set_timer(6, self._status_report)

    # --- navigation ---------------------------------------------------------------------

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self._focus_tab(tab)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if not isinstance(self.focused, Input):  # "/" typed on the Overview: the filter has the keys
            self._focus_tab(event.pane.id)

    def _focus_tab(self, tab: str | None) -> None:
        focus = dict((id_, selector) for id_, _, selector in TABS).get(tab or "")
        if focus is not None:
            self.screen.set_focus(self.query_one(focus))

    def action_type_here(self) -> None:
        """/ goes to the Tensors tab's filter, now: a key typed right after it lands there."""
        self.query_one(TabbedContent).active = "tensors"
        self.screen.set_focus(self.query_one("#quant-filter", Input))

    def action_leave_box(self) -> None:
        self._focus_tab(self.query_one(TabbedContent).active)

    @on(QuantTensors.DetailRequested)
    def _detail(self, event: QuantTensors.DetailRequested) -> None:
        width = min(100, int(self.size.width * 0.9)) - 6
        self.push_screen(MessageDialog(event.tensor.name, tensor_detail(event.tensor, width)))

    def action_help(self) -> None:
        self.push_screen(MessageDialog("surgeon tui BASE QUANT", HELP))

    async def action_quit(self) -> None:
        """Quits at once: nothing here writes, so a running diff is only told to stop."""
        if self.job is not None:
            self.job.cancel.set()
        self.exit()
