"""The app's five tabs. They draw what the app's session holds (the app calls their `show`)
and turn keys and clicks into messages that the app handles; none of them calls the engine
or the app. Each carries its own CSS; how the screen lays them out is in app.tcss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Button, DataTable, Input, Label, Select, Static
from textual.widgets.data_table import ColumnKey

from surgeon.atomic import OutputExists
from surgeon.diff.report import summary_line
from surgeon.errors import SurgeonError
from surgeon.format.checkpoint import open_checkpoint
from surgeon.format.writer import check_output_folder
from surgeon.model.families import LayerSpec
from surgeon.model.names import parse_layer_spec, parse_layers
from surgeon.prune.options import FFN_IMPORTANCE, HEALS, IMPORTANCE, MODES, PRUNE_DEFAULTS, PruneOptions
from surgeon.runtime.settings import RunSettings
from surgeon.text import inert

from . import views
from .session import RangeEdit

HEADS_LABEL = "zeroed heads"
CHANNELS_LABEL = "zeroed"  # where the column gives the MLP channels too: "#3 -25% ch"


class LayerMap(DataTable):
    """One row per layer; space keeps the layer from the candidate or rolls it back. The
    Plan tab's map also shows each changed layer's KL measured alone (`kl_column`)."""

    BINDINGS = [
        Binding("space", "toggle_layer", "Toggle"),
        Binding("home,g", "edge(0)", "First layer", show=False),  # a map of 48+ layers needs them
        Binding("end,G", "edge(-1)", "Last layer", show=False),
    ]

    class ToggleRequested(Message):
        """Keep this layer from the candidate, or roll it back to the base."""

        def __init__(self, layer: int):
            super().__init__()
            self.layer = layer

    def __init__(self, kl_column: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.kl_column = kl_column

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self.add_column("layer", key="layer")
        self.add_column("from", key="from", width=9)
        if self.kl_column:
            self.add_column("KL alone", key="kl", width=6 + 1 + views.BAR_WIDTH)
        for column in views.MAP_COLUMNS:
            self.add_column(column, key=column)
        self.add_column(HEADS_LABEL, key="heads")

    def show(self, rows: list[views.LayerRow], layer_kl: dict[int, float | None] | None = None) -> None:
        row_index = self.cursor_row
        self.clear()
        self._heads_label(CHANNELS_LABEL if any(row.channels for row in rows) else HEADS_LABEL)
        # The Overview's map only: beside the Plan map's KL column it was cut at 80 columns.
        experts = self._experts_column(not self.kl_column and any(row.expert_count for row in rows))
        largest = max((kl for kl in (layer_kl or {}).values() if kl is not None), default=0.0)
        for row in rows:
            cells = views.layer_cells(row)
            if experts:
                cells.append(views.experts_cell(row))
            if self.kl_column:
                if row.source == "identical" or (layer_kl is not None and row.layer not in layer_kl):
                    kl = Text("")
                else:
                    measured = layer_kl is not None
                    kl = views.kl_cell(layer_kl.get(row.layer) if layer_kl is not None else None, largest, measured)
                cells.insert(2, kl)
            self.add_row(*cells, key=str(row.layer))
        if rows:
            self.move_cursor(row=min(row_index, len(rows) - 1))

    def _heads_label(self, label: str) -> None:
        """The last column says "zeroed" where it also gives the MLP channels a layer lost
        ("#3 -25% ch"); a column's width only grows, so a new label is a new column."""
        if str(self.columns[ColumnKey("heads")].label) == label:
            return
        had_experts = "experts" in self.columns
        for key in ("heads", "experts") if had_experts else ("heads",):
            self.remove_column(key)
        self.add_column(label, key="heads")
        if had_experts:
            self.add_column("experts", key="experts")

    def _experts_column(self, wanted: bool) -> bool:
        """A mixture-of-experts pair gets an "experts" column, its changed experts per layer;
        a dense pair has none (the map must fit 80 columns)."""
        if wanted and "experts" not in self.columns:
            self.add_column("experts", key="experts")
        elif not wanted and "experts" in self.columns:
            self.remove_column("experts")
        return wanted

    def selected_layer(self) -> int | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        return int(key) if key is not None else None  # every row's key is its layer

    def action_edge(self, end: int) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1 if end else 0)

    def action_toggle_layer(self) -> None:  # not action_toggle: DOMNode's toggles an attribute
        layer = self.selected_layer()
        if layer is not None:
            self.post_message(self.ToggleRequested(layer))


class OverviewPane(Vertical):
    DEFAULT_CSS = """
    #summary { height: auto; padding: 0 1; }
    .section { padding: 0 1; text-style: bold; }
    #overview-body { height: 1fr; }
    #map-column { height: 1fr; min-height: 6; }
    #layer-map { height: 1fr; min-height: 5; }
    #shard-panel { height: auto; }
    #shards { height: auto; max-height: 7; }
    #files { height: auto; max-height: 5; }
    .map-legend { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Hashing both checkpoints...", id="summary")
        with Container(id="overview-body"):
            with Vertical(id="map-column"):
                yield LayerMap(id="layer-map")
                yield Static(views.map_legend(), id="map-legend", classes="map-legend")
            with Vertical(id="shard-panel"):
                yield Label("Shard files", classes="section")
                yield DataTable(id="shards", cursor_type="row")
                yield Label("Other files", classes="section", id="files-label")
                yield DataTable(id="files", cursor_type="row")

    SHARD_COLUMNS = ("shard", "verdict", "differ", "candidate sha256")
    FILE_COLUMNS = ("file", "verdict")

    def on_mount(self) -> None:
        self.query_one("#shards", DataTable).add_columns(*self.SHARD_COLUMNS)
        self.query_one("#files", DataTable).add_columns(*self.FILE_COLUMNS)

    def show(self, report, rows: list[views.LayerRow]) -> None:
        self.query_one("#summary", Static).update(Text(inert(summary_line(report))))
        self.query_one("#layer-map", LayerMap).show(rows)
        shards = [(shard.name, views.shard_cells(shard)) for shard in report.shards]
        fill_table(self.query_one("#shards", DataTable), self.SHARD_COLUMNS, shards)
        files = [
            (item.name, [Text(inert(item.name)), Text(item.status, style=views.STATUS_STYLE.get(item.status, ""))])
            for item in report.files
        ]
        fill_table(self.query_one("#files", DataTable), self.FILE_COLUMNS, files)


def fill_table(table: DataTable, labels: tuple[str, ...], rows: list[tuple[str, list[Text]]]) -> None:
    """The table's rows, each column as wide as its widest cell, set before the first frame.
    DataTable measures an auto-width column when it is next idle, and a frame drawn before
    that caches the cell at the old width (its cache key has no width): after a candidate
    swap the shard verdict "identical" stayed drawn "identic" in a column the first pair's
    "changed" had sized."""
    widths = [max([cell_len(label), *(row[i].cell_len for _, row in rows)]) for i, label in enumerate(labels)]
    table.clear(columns=True)
    for label, width in zip(labels, widths, strict=True):
        table.add_column(label, key=label, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)


PAGE = 80  # tensor rows drawn at a time: a screen shows 20-50 of them
WINDOW = 4 * PAGE  # most tensor rows the table holds: beyond, the window moves with the cursor
FILTER_DELAY = 0.15  # seconds of no typing before the filter runs (a key takes 0.1-0.2 s to type)
STATUS_CHOICES = [(s, s) for s in ("all", "changed", "identical", "added", "removed", "retyped")] + [
    ("plan: kept", "plan:candidate"),
    ("plan: rolled back", "plan:base"),
]


class TensorTable(DataTable):
    """The Tensors tab's table. It holds a window of the filtered list (TensorsPane draws
    it), so DataTable's own keys would stop at the window's edges: Home and End went to the
    last row drawn (End even scrolled sideways). Here they ask the pane for the list's ends."""

    BINDINGS = [
        Binding("home,ctrl+home,g", "edge('first')", "First row", show=False),
        Binding("end,ctrl+end,shift+end,G", "edge('last')", "Last row", show=False),
    ]

    class EdgeRequested(Message):
        def __init__(self, last: bool):
            super().__init__()
            self.last = last

    class Scrolled(Message):
        """The view moved, perhaps without the cursor (the mouse wheel, the scrollbar)."""

    def action_edge(self, which: str) -> None:
        self.post_message(self.EdgeRequested(which == "last"))

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self.post_message(self.Scrolled())


class TensorsPane(Vertical):
    DEFAULT_CSS = """
    #tensor-filters { height: 3; }
    #filter-text { width: 1fr; }
    #filter-status { width: 16; }
    #filter-layers { width: 14; }
    #filter-layers.invalid { border: tall $error; }
    #tensor-table { height: 1fr; }
    #tensor-count { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("s", "next_sort", "Sort"),
        Binding("y", "yank('sha256')", "Copy"),  # its SHA256; "Copy SHA256" pushed Quit off 80 columns
        Binding("Y", "yank('name')", "Copy name", show=False),
    ]

    class DetailRequested(Message):
        """Open a tensor's detail: its hashes, stats and heads."""

        def __init__(self, name: str):
            super().__init__()
            self.name = name

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.tensors: list = []
        self.shown: list = []
        self.from_candidate: set[str] = set()
        self.stale = False  # the plan changed while the tab was hidden
        self.sort = "name"
        self.index = views.TensorIndex([])
        # The table holds self.shown[first : first + drawn], a window drawn a page at a time:
        # drawing all 20k rows took 5.9 s (1.5 s of it building the cells, 3.4 s DataTable
        # measuring and drawing them), so End draws the last rows alone.
        self.first = 0
        self.drawn = 0
        self.columns: dict[str, int] = {}  # the columns shown and their widths (views.tensor_layout)
        self._typing: Timer | None = None  # the pending filter of keys still being typed
        self._redrawing = False  # until the table has settled after a redraw: its scrolls are ours

    def compose(self) -> ComposeResult:
        with Horizontal(id="tensor-filters"):
            yield Input(placeholder="filter: words in the name", id="filter-text")
            yield Select(STATUS_CHOICES, value="all", allow_blank=False, id="filter-status")
            yield Input(placeholder="layers 0-3", id="filter-layers")
        yield TensorTable(id="tensor-table", cursor_type="row", zebra_stripes=True)
        yield Static("Hashing both checkpoints...", id="tensor-count")

    def on_mount(self) -> None:
        self._lay_out()

    def _lay_out(self) -> bool:
        """Columns that fit the pane's width, each as wide as its widest value over the whole
        report; True when they changed (the table is then emptied, columns and all)."""
        table = self.query_one("#tensor-table", DataTable)
        room = (self.size.width or self.app.size.width) - table.styles.scrollbar_size_vertical
        columns = views.tensor_layout(self.index.widths, room)
        if columns == self.columns:
            return False
        self.columns = columns
        table.clear(columns=True)
        self.first = self.drawn = 0
        for label, width in columns.items():
            table.add_column(label, key=label, width=width)
        return True

    def on_resize(self) -> None:
        if self.tensors and self.is_on_screen:
            at = self._cursor_index()
            if self._lay_out():
                self._redraw(at)

    def show(self, report, from_candidate: set[str]) -> None:
        """The report's tensors, with where the plan takes each from; called on every plan
        change. A plan change redraws the table only when it can be seen (a page of rows,
        10-80 ms from 20k to 100k tensors, on each space pressed on a map); a new report
        draws it at once, hidden or not, so that opening the tab draws the rows in its first
        frame, not an empty table first (10 ms at 20k tensors, when the hashing ends)."""
        new = report.tensors is not self.tensors
        changed = new or from_candidate != self.from_candidate
        if new:
            self.index = views.TensorIndex(report.tensors)
        self.tensors, self.from_candidate = report.tensors, from_candidate
        self.stale = self.stale or changed
        if self.stale and (new or self.is_on_screen):
            self.refilter()

    @property
    def is_on_screen(self) -> bool:
        return self.display and self.parent is not None and self.parent.display

    def on_show(self) -> None:
        if self.stale and self.tensors:
            self.refilter()
        else:
            self.on_resize()  # the terminal may have changed size while the tab was hidden

    def refilter(self, top: bool = False) -> None:
        """Filter and sort from the index, then draw the first page of rows: at 18.7k tensors
        drawing every row took 5.9 s to open the tab and 3.3 s a filter (issue 12); the rest
        is drawn as the cursor nears the end (on_data_table_row_highlighted)."""
        self.stale = False
        text = self.query_one("#filter-text", Input).value
        status = self.query_one("#filter-status", Select).value
        layers = self._layers()
        at = 0 if top else self._cursor_index()  # a new filter or sort starts at its first row
        self.shown = self.index.filtered(self.sort, text, str(status), layers, self.from_candidate)
        self._lay_out()
        self._redraw(at)
        self._show_count()

    def _show_count(self) -> None:
        """How many tensors the filter shows, and the cursor's row among them: the table holds
        a window of them, so its scrollbar cannot say where in the list the cursor is."""
        row = f"; row {self._cursor_index() + 1}" if self.shown else ""
        count = (
            f"{len(self.shown)} of {len(self.tensors)} tensors, sorted by {self.sort}{row} (s: next sort, End: last)"
        )
        if self.query_one("#filter-layers", Input).has_class("invalid"):
            count += "; the layer range is not understood (use 0-3,7), so it is ignored"
        self.query_one("#tensor-count", Static).update(count)

    def _cursor_index(self) -> int:
        """The cursor's row in self.shown."""
        table = self.query_one("#tensor-table", DataTable)
        return self.first + table.cursor_row if table.row_count else 0

    def _redraw(self, at: int, keep_screen_row: bool = False) -> None:
        """The table redrawn as the window of self.shown around row `at`, the cursor on it: a
        page from the top when `at` is in the first page, else a page either side of it.
        `keep_screen_row`: the cursor stays on the screen line it was on (scrolling up past
        the window's top), instead of the least scroll that shows it."""
        table = self.query_one("#tensor-table", DataTable)
        at = max(0, min(at, len(self.shown) - 1))
        before = self._rows_height(table.cursor_row) - table.scroll_y if keep_screen_row else 0
        table.clear()
        self.first = 0 if at < PAGE else max(0, min(at - PAGE, len(self.shown) - 2 * PAGE))
        self.drawn = 0
        self._draw_more(PAGE if self.first == 0 and at < PAGE else 2 * PAGE)
        if self.shown:
            table.move_cursor(row=at - self.first, scroll=not keep_screen_row)
        if keep_screen_row:
            y = self._rows_height(at - self.first) - before
            table.call_after_refresh(table.scroll_to, y=y, animate=False, immediate=True)
        self._redrawing = True
        table.call_after_refresh(setattr, self, "_redrawing", False)

    def _rows_height(self, rows: int) -> int:
        """Screen lines taken by the table's first `rows` rows (names fold onto more lines)."""
        return sum(row.height for row in self.query_one("#tensor-table", DataTable).ordered_rows[:rows])

    def _draw_more(self, rows: int = 0) -> None:
        """The next page of self.shown (or `rows` of it) appended to the table's window, each
        row keyed by its tensor's name (the detail and yank read it), as tall as its name
        folded into the name column."""
        table = self.query_one("#tensor-table", DataTable)
        start = self.first + self.drawn
        end = min(len(self.shown), start + max(rows, PAGE))
        columns, width = list(self.columns), self.columns["name"]
        for t in self.shown[start:end]:
            cells = views.tensor_cells(t, self.from_candidate, columns)
            table.add_row(*cells, key=t.name, height=views.name_lines(t.name, width))
        self.drawn = end - self.first

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """More rows as the cursor nears either end of the window: a page appended below (up
        to WINDOW rows), else the window moved to a page either side of the cursor."""
        if event.data_table.id != "tensor-table":
            return
        row = event.data_table.cursor_row  # now, not when the event was sent: a redraw may lie between
        below = self.first + self.drawn < len(self.shown) and row >= self.drawn - PAGE // 4
        above = self.first > 0 and row < PAGE // 4
        if below and self.drawn + PAGE <= WINDOW:
            self._draw_more()
        elif below or above:
            self._redraw(self.first + row, keep_screen_row=True)
        self._show_count()

    def on_tensor_table_scrolled(self, event: TensorTable.Scrolled) -> None:
        """The view near an end of the window, moved by the wheel or the scrollbar, which
        leave the cursor where it was: a page appended below (up to WINDOW rows), else the
        window moved, the cursor onto the view's middle row (as the wheel moves it in k9s)."""
        table = self.query_one("#tensor-table", DataTable)
        top = round(table.scroll_y)
        height = table.scrollable_content_region.height - table.header_height
        if self._redrawing or top <= self._rows_height(table.cursor_row) < top + height:
            return  # a scroll of the redraw's, or the cursor's own: on_data_table_row_highlighted
        below = self.first + self.drawn < len(self.shown) and top + height >= self._rows_height(self.drawn) - 4
        above = self.first > 0 and top < 4
        if below and self.drawn + PAGE <= WINDOW:
            self._draw_more()
        elif below or above:
            heights = [row.height for row in table.ordered_rows]
            middle, lines = 0, top + height // 2
            while middle < len(heights) - 1 and lines >= heights[middle]:
                lines -= heights[middle]
                middle += 1
            table.move_cursor(row=middle, scroll=False)
            self._redraw(self.first + middle, keep_screen_row=True)

    def on_tensor_table_edge_requested(self, event: TensorTable.EdgeRequested) -> None:
        """Home/End: the first or last row of the filtered list, drawn if it is not."""
        table = self.query_one("#tensor-table", DataTable)
        if not self.shown:
            return
        at = len(self.shown) - 1 if event.last else 0
        if self.first <= at < self.first + self.drawn:
            table.move_cursor(row=at - self.first)
        else:
            self._redraw(at)
        table.scroll_x = 0

    def _layers(self) -> set[int] | None:
        box = self.query_one("#filter-layers", Input)
        spec = box.value.strip()
        if not spec:
            box.remove_class("invalid")
            return None
        try:
            ranges = parse_layer_spec(spec, what="layers").ranges
        except SurgeonError:
            box.add_class("invalid")
            return None
        box.remove_class("invalid")
        # A filter is lenient about layers the model lacks, and is matched against the layers
        # the tensors have: "0-99999999" must not build a set of a hundred million numbers.
        present = {t.layer for t in self.tensors if t.layer is not None}
        if ranges is None:
            return present
        return {n for n in present if any(low <= n <= high for low, high in ranges)}

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filter once typing pauses (FILTER_DELAY), not on every key: keys pressed while a
        filter ran used to queue up behind it."""
        if self.tensors:
            if self._typing is not None:
                self._typing.stop()
            self._typing = self.set_timer(FILTER_DELAY, lambda: self.refilter(top=True))

    def on_select_changed(self, event: Select.Changed) -> None:
        if self.tensors:
            self.refilter(top=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#tensor-table", DataTable).focus()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key in views.TENSOR_SORTS:
            self.sort = key
            self.refilter(top=True)

    def action_yank(self, what: str) -> None:
        """The selected tensor's full SHA256 (the candidate's, else the base's) or its name, to
        the clipboard: the table shows 8 hex digits of each hash, too few to paste anywhere."""
        table = self.query_one("#tensor-table", DataTable)
        if not table.row_count:
            self.notify("No tensor selected", severity="warning", timeout=2)
            return
        name = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        tensor = next(t for t in self.shown if t.name == name)
        side = tensor.other or tensor.base
        text = name if what == "name" else (side.sha256 if side is not None else None)
        if not text:
            self.notify("Not hashed: press r to hash again", severity="warning", timeout=3)
            return
        self.app.copy_to_clipboard(text)
        self.notify(inert(f"Copied {'the name' if what == 'name' else 'SHA256'} of {name}"), timeout=3, markup=False)

    def action_next_sort(self) -> None:
        names = list(views.TENSOR_SORTS)
        self.sort = names[(names.index(self.sort) + 1) % len(names)]
        self.refilter(top=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()  # the pane's own table: what it means goes up as a DetailRequested
        self.post_message(self.DetailRequested(str(event.row_key.value)))


class PlanPane(Vertical):
    DEFAULT_CSS = """
    #plan-summary, #plan-eval { height: auto; padding: 0 1; }
    #plan-costs, #plan-reshape { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #plan-controls { height: 1; }
    #plan-controls Button { margin: 0 0 0 1; }
    #plan-range { width: 1fr; margin: 0 0 0 1; }
    #plan-map { height: 1fr; }
    #plan-legend { height: 1; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """
    RANGE_BUTTONS: dict[str, RangeEdit] = {
        "plan-roll-back": "roll_back",
        "plan-restore": "restore",
        "plan-keep-only": "keep_only",
    }
    BINDINGS = [Binding("l", "range_box", "Layers")]  # `/` searches the map, as on every tab

    class RangeRequested(Message):
        """Change the plan over typed layers: `how` is a RollbackPlan method (roll_back,
        restore or keep_only) and `spec` the layers, e.g. "4-59"."""

        def __init__(self, how: RangeEdit, spec: str):
            super().__init__()
            self.how, self.spec = how, spec

    def compose(self) -> ComposeResult:
        yield Static("Hashing both checkpoints...", id="plan-summary")
        yield Static("", id="plan-eval")
        yield Static("", id="plan-costs")  # one line, cut at the screen's edge: the map has every value
        # whether the plan could be reshaped, and what it saves: in the row that once only set the
        # controls apart, so that at 80x24 the map still keeps a row for each of 8 layers
        yield Static("", id="plan-reshape")
        # One line of compact controls: at 80x24 the map keeps a row for each of 8 layers.
        with Horizontal(id="plan-controls"):
            yield Input(placeholder="l: layers, e.g. 4-59", id="plan-range", compact=True)
            yield Button("Roll back", id="plan-roll-back", variant="primary", compact=True)
            yield Button("Keep", id="plan-restore", compact=True)
            yield Button("Keep only", id="plan-keep-only", compact=True)
        yield LayerMap(kl_column=True, id="plan-map")
        yield Static(views.map_legend(), id="plan-legend")

    def show(
        self,
        rows: list[views.LayerRow],
        summary,
        candidate_name: str,
        plan_eval=None,
        layer_kl=None,
        text_name=None,
        reshape=None,
    ) -> None:
        """`plan_eval`: this plan's eval summary, None when not evaluated, measured on the text
        `text_name`; `layer_kl`: each changed layer's KL alone, None before it is measured;
        `reshape`: what a reshape would make of the plan (a ReshapePreview), None: no line."""
        self.query_one("#plan-reshape", Static).update(views.reshape_text(reshape) if reshape else "")
        self.query_one("#plan-summary", Static).update(views.plan_text(summary, candidate_name))
        self.query_one("#plan-eval", Static).update(views.eval_text(plan_eval, text_name, brief=True))
        self.query_one("#plan-costs", Static).update(views.layer_cost_text(layer_kl))
        self.query_one("#plan-map", LayerMap).show(rows, layer_kl)

    def action_range_box(self) -> None:
        self.query_one("#plan-range", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter rolls the range back and returns to the map, where single keys work again."""
        if event.input.id == "plan-range":
            self.post_message(self.RangeRequested("roll_back", event.value))
            self.query_one("#plan-map", LayerMap).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        how = self.RANGE_BUTTONS.get(event.button.id or "")
        if how is not None:
            self.post_message(self.RangeRequested(how, self.query_one("#plan-range", Input).value))


class CanaryPane(Vertical):
    DEFAULT_CSS = """
    #canary-controls { height: 3; }
    #canary-status, #canary-auto-steps { height: auto; padding: 0 1; }
    #canary-inputs { height: 1; padding: 0 1; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    #canary-scroll { height: 1fr; }
    """

    class RunRequested(Message):
        """Run the canary on the current plan."""

    class AutoPlanRequested(Message):
        """Search the largest set of changed layers that passes the canary."""

    class CancelRequested(Message):
        """Cancel the running job."""

    BUTTONS = {"canary-run": RunRequested, "canary-auto": AutoPlanRequested, "canary-cancel": CancelRequested}

    def compose(self) -> ComposeResult:
        with Horizontal(id="canary-controls"):
            yield Button("Run canary (c)", id="canary-run", variant="primary")
            yield Button("Auto plan (a)", id="canary-auto")
            yield Button("Cancel (x)", id="canary-cancel")
        yield Static("", id="canary-inputs")
        yield Static("No canary run for this plan yet.", id="canary-status")
        yield Static("", id="canary-auto-steps")
        with VerticalScroll(id="canary-scroll"):
            yield Static("", id="canary-result")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        request = self.BUTTONS.get(event.button.id or "")
        if request is not None:
            self.post_message(request())

    def show_inputs(self, inputs: Text) -> None:
        """Which prompts the canary asks and which text the eval scores on."""
        self.query_one("#canary-inputs", Static).update(inputs)

    def show_steps(self, steps: Text) -> None:
        """The last search's steps, or the running search's live line."""
        self.query_one("#canary-auto-steps", Static).update(steps)

    def show(self, plan_label: str, report, auto_steps=(), plan_eval: Text | None = None) -> None:
        """`auto_steps`: the last search's steps as Text, or a canary search's steps;
        `plan_eval`: the plan's eval line, shown under the verdict."""
        from surgeon.recover.render import canary_verdict

        self.show_steps(auto_steps if isinstance(auto_steps, Text) else views.auto_steps_text(auto_steps))
        status = self.query_one("#canary-status", Static)
        result = self.query_one("#canary-result", Static)
        if report is None:
            line = Text(f"Plan {plan_label}: no canary run yet. c: run it in memory; a: auto plan search.")
            result.update("")
        else:
            line = Text.assemble(f"Plan {plan_label}: ", canary_verdict(report))
            result.update(views.canary_blocks(report))
        status.update(line.append("\n").append_text(plan_eval) if plan_eval is not None else line)


class StatusLine(Static):
    """One line under the tabs: the plan, its canary and eval verdicts and the candidate
    (views.status_text), on every tab. It is drawn for its width, and again when that changes."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._line: Callable[[int], Text | str] = lambda width: ""

    def show(self, line: Callable[[int], Text | str]) -> None:
        """`line(width)`: the line that fits `width` cells."""
        self._line = line
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        # the width inside the padding; before the first layout, the screen's less the padding
        self.update(self._line(self.content_region.width or self.app.size.width - 2))


IMPORTANCE_CHOICES = [(name, name) for name in IMPORTANCE]  # the prune options own the names
HEAL_CHOICES = [(name, name) for name in HEALS]
MODE_CHOICES = [(name, name) for name in MODES]
FFN_IMPORTANCE_CHOICES = [(name, name) for name in FFN_IMPORTANCE]
FFN_FRAC_TIP = "Fraction of MLP channels to remove per layer (gate/up rows, down_proj columns); 0: none"


class PrunePane(VerticalScroll):
    """The prune's options and its progress. It starts from the Start button or p, and the app
    asks first, naming the output folder; Enter in a field only moves to the next field (it
    used to start a prune with no question asked)."""

    DEFAULT_CSS = """
    .form-row { height: 3; }
    .form-label { width: 11; padding: 1 1 0 0; text-align: right; }
    #prune-frac, #prune-layers, #prune-importance, #prune-heal, #prune-mode { width: 1fr; }
    #prune-ffn-frac, #prune-ffn-importance { width: 1fr; }
    #prune-output { width: 1fr; }
    #prune-heads { height: auto; padding: 0 0 0 11; }
    #prune-progress { height: auto; min-height: 4; }
    """

    BINDINGS = [Binding("p", "start", "Start prune")]

    class PruneSubmitted(Message):
        """Prune the base with the form's options (`request` checks them, the app confirms)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._layers: list[LayerSpec] | None = None  # the base's, once known

    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("fraction", classes="form-label")
            yield Input(f"{PRUNE_DEFAULTS.prune_frac:g}", id="prune-frac")  # the options' defaults, as the CLI's
            yield Label("layers", classes="form-label")
            yield Input(PRUNE_DEFAULTS.layers, id="prune-layers")
            yield Label("mode", classes="form-label")  # mask zeroes the heads, reshape slices them out
            yield Select(MODE_CHOICES, value=PRUNE_DEFAULTS.mode, allow_blank=False, id="prune-mode")
        yield Static("", id="prune-heads")  # the heads the fraction typed comes to, as prune counts them
        with Horizontal(classes="form-row"):
            yield Label("importance", classes="form-label")
            yield Select(IMPORTANCE_CHOICES, value=PRUNE_DEFAULTS.importance, allow_blank=False, id="prune-importance")
            yield Label("heal", classes="form-label")
            yield Select(HEAL_CHOICES, value=PRUNE_DEFAULTS.heal, allow_blank=False, id="prune-heal")
        with Horizontal(classes="form-row"):  # the MLP's channels (--ffn-frac): 0, the default, prunes none
            yield Label("MLP frac", classes="form-label")
            yield Input(f"{PRUNE_DEFAULTS.ffn_frac:g}", id="prune-ffn-frac", tooltip=FFN_FRAC_TIP)
            yield Label("MLP score", classes="form-label")
            yield Select(
                FFN_IMPORTANCE_CHOICES,
                value=PRUNE_DEFAULTS.ffn_importance,
                allow_blank=False,
                id="prune-ffn-importance",
                tooltip="How the MLP's channels are scored (--ffn-importance)",
            )
        with Horizontal(classes="form-row"):
            yield Label("output", classes="form-label")
            yield Input("", placeholder="empty: a new <base>-pruned folder here", id="prune-output")
            yield Button("Start prune (p)", id="prune-run", variant="primary")
        yield DataTable(id="prune-progress", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#prune-progress", DataTable)
        for label in ("layer", "phase", "heads pruned", "rel residual", "seconds"):
            table.add_column(label, key=label)

    def show_layers(self, layers: list[LayerSpec] | None) -> None:
        """The base's layers, whose geometry turns the fraction typed into heads."""
        self._layers = layers
        self._draw_heads()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id in ("prune-frac", "prune-layers"):
            self._draw_heads()

    def heads_text(self) -> Text:
        """The heads the form's fraction prunes in its layers (empty while not known)."""
        form = self.form()
        return views.prune_heads_text(self._layers, form["fraction"], form["layers"])

    def _draw_heads(self) -> None:
        self.query_one("#prune-heads", Static).update(self.heads_text())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "prune-run":
            self.post_message(self.PruneSubmitted())

    def action_start(self) -> None:
        self.post_message(self.PruneSubmitted())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in a field goes on to the next one: a stray Enter starts nothing."""
        event.stop()
        self.screen.focus_next()

    def form(self) -> dict:
        return {
            "fraction": self.query_one("#prune-frac", Input).value.strip(),
            "layers": self.query_one("#prune-layers", Input).value.strip() or PRUNE_DEFAULTS.layers,
            "importance": str(self.query_one("#prune-importance", Select).value),
            "heal": str(self.query_one("#prune-heal", Select).value),
            "mode": str(self.query_one("#prune-mode", Select).value),
            "ffn_fraction": self.query_one("#prune-ffn-frac", Input).value.strip(),
            "ffn_importance": str(self.query_one("#prune-ffn-importance", Select).value),
            "output": self.query_one("#prune-output", Input).value.strip(),
        }

    def request(self, base: Path, num_layers: int | None, tokenizer: Path | None):
        """The form as (PruneOptions, output folder) for pruning `base`; a SurgeonError in the
        tab's words if a field is wrong."""
        return prune_request(self.form(), base, num_layers, tokenizer)

    def reset_progress(self) -> None:
        table = self.query_one("#prune-progress", DataTable)
        table.clear()
        if "channels" in table.columns:  # a prune with no MLP channels shows no such column
            table.remove_column("channels")

    def phase(self, layer: int, phase: str) -> None:
        table = self.query_one("#prune-progress", DataTable)
        key = str(layer)
        if key not in table.rows:
            table.add_row(str(layer), phase, "", "", "", key=key)
            table.move_cursor(row=table.row_count - 1)
        else:
            table.update_cell(key, "phase", phase, update_width=True)

    def layer_done(self, result) -> None:
        table = self.query_one("#prune-progress", DataTable)
        key = str(result.layer)
        if key not in table.rows:
            self.phase(result.layer, "done")
        table.update_cell(
            key, "phase", "pruned" if result.pruned else "forward only", update_width=True
        )  # wider than "prune"
        heads = " ".join(f"#{h}" for h in result.pruned_heads) if result.pruned else "-"  # as the maps: #0 is head 0
        table.update_cell(key, "heads pruned", heads or "none", update_width=True)
        residual = (result.refit or {}).get("rel_residual")
        table.update_cell(key, "rel residual", "-" if residual is None else f"{residual:.4f}")
        table.update_cell(key, "seconds", f"{result.seconds:.2f}")
        if result.ffn_width:  # --ffn-frac: the MLP channels removed of the layer's, as prune's summary
            if "channels" not in table.columns:
                table.add_column("channels", key="channels", default="")
            table.update_cell(key, "channels", views.channels_cell(result), update_width=True)


def prune_request(form: dict, base: Path, num_layers: int | None, tokenizer: Path | None):
    """PruneOptions and the output folder from the Prune tab's fields, checked in the tab's
    own words before any work starts."""
    try:
        fraction = float(form["fraction"])
    except ValueError:
        fraction = float("nan")  # in no range: refused below
    try:  # the engine's own check and words (PruneOptions' range of prune_frac), so they cannot drift
        PruneOptions(prune_frac=fraction).validate()
    except SurgeonError as exc:
        raise SurgeonError(f"fraction {form['fraction']!r}: {exc}, e.g. {PRUNE_DEFAULTS.prune_frac:g}") from None
    ffn_fraction = _ffn_fraction(form.get("ffn_fraction", ""))
    if num_layers is not None:
        parse_layers(form["layers"], num_layers, what="layers")
    options = PruneOptions(
        prune_frac=fraction,
        ffn_frac=ffn_fraction,
        ffn_importance=form.get("ffn_importance", PRUNE_DEFAULTS.ffn_importance),
        layers=form["layers"],
        importance=form["importance"],
        heal=form["heal"],
        mode=form.get("mode", PRUNE_DEFAULTS.mode),
        run=RunSettings(tokenizer=str(tokenizer) if tokenizer else None),
    )
    options.validate()  # among its words: channels are pruned in mask mode only
    if options.mode == "reshape":
        _check_reshape(base, options, num_layers)
    channels = f"-mlp-{ffn_fraction:g}" if ffn_fraction else ""
    default = Path.cwd() / f"{base.name}-pruned-{fraction:g}{channels}-layers-{form['layers'].replace(',', '_')}"
    output = Path(form["output"]).expanduser() if form["output"] else _free_folder(default)
    try:
        check_output_folder(output, [open_checkpoint(base)], force=False)  # the writers' own guard, before any work
    except OutputExists:
        raise SurgeonError(f"{output}: already exists; choose another output folder") from None
    return options, output


def _ffn_fraction(typed: str) -> float:
    """The MLP fraction typed (empty: the default, no channel), checked by PruneOptions
    itself, as the heads' fraction is."""
    if not typed:
        return PRUNE_DEFAULTS.ffn_frac
    try:
        fraction = float(typed)
    except ValueError:
        fraction = float("nan")  # in no range: refused below
    try:
        PruneOptions(ffn_frac=fraction).validate()
    except SurgeonError as exc:
        raise SurgeonError(f"MLP fraction {typed!r}: {exc}, e.g. 0.25 (0: none)") from None
    return fraction


def _check_reshape(base: Path, options: PruneOptions, num_layers: int | None) -> None:
    """A reshape the prune would refuse after loading torch, refused now in its words
    (torch-free): every layer pruned, and a fraction every KV group can share (the solver's
    one line, naming the reachable fractions)."""
    from surgeon.prune.reshape_plan import solve, type_geometries

    if num_layers is not None and sorted(parse_layers(options.layers, num_layers, what="layers")) != list(
        range(num_layers)
    ):
        raise SurgeonError(
            "a reshape prunes every layer: transformers keeps one number of query heads for the whole model; "
            "set layers to all, or use mask mode"
        )
    solve(type_geometries(open_checkpoint(base).config or {}), options.prune_frac)


def _free_folder(path: Path) -> Path:
    candidate, number = path, 2
    while candidate.exists():
        candidate, number = path.with_name(f"{path.name}-{number}"), number + 1
    return candidate
