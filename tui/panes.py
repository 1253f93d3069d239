"""The app's five tabs. They draw what the app's session holds and turn keys and clicks into
app actions; none of them calls the engine."""

from __future__ import annotations

from rich.text import Text
from surgeon.tui import views
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from surgeon.text import inert


class LayerMap(DataTable):
    """One row per layer; space keeps the layer from the candidate or rolls it back. The
    Plan tab's map also shows each changed layer's KL measured alone (`kl_column`)."""

    BINDINGS = [Binding("space", "toggle", "Toggle")]

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
        self.add_column("zeroed heads", key="heads")

    def show(self, rows: list[views.LayerRow], layer_kl: dict[int, float | None] | None = None) -> None:
        row_index = self.cursor_row
        self.clear()
        largest = max((kl for kl in (layer_kl or {}).values() if kl is not None), default=0.0)
        for row in rows:
            cells = views.layer_cells(row)
            if self.kl_column:
                if row.source == "identical" or (layer_kl is not None and row.layer not in layer_kl):
                    kl = Text("")
                else:
                    measured = layer_kl is not None
                    kl = views.kl_cell(layer_kl.get(row.layer) if measured else None, largest, measured)
                cells.insert(2, kl)
            self.add_row(*cells, key=str(row.layer))
        if rows:
            self.move_cursor(row=min(row_index, len(rows) - 1))

    def selected_layer(self) -> int | None:
        if not self.row_count:
            return None
        return int(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)

    def action_toggle(self) -> None:
        layer = self.selected_layer()
        if layer is not None:
            self.app.toggle_layer(layer)


class OverviewPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("Hashing both checkpoints...", id="summary")
        with Container(id="overview-body"):
            yield LayerMap(id="layer-map")
            with Vertical(id="shard-panel"):
                yield Label("Shard files", classes="section")
                yield DataTable(id="shards", cursor_type="row")
                yield Label("Other files", classes="section", id="files-label")
                yield DataTable(id="files", cursor_type="row")

    def on_mount(self) -> None:
        self.query_one("#shards", DataTable).add_columns("shard", "verdict", "differ", "candidate sha256")
        self.query_one("#files", DataTable).add_columns("file", "verdict")

    def show(self, report, rows: list[views.LayerRow]) -> None:
        from surgeon.diff.report import summary_line

        self.query_one("#summary", Static).update(Text(inert(summary_line(report))))
        self.query_one("#layer-map", LayerMap).show(rows)
        shards = self.query_one("#shards", DataTable)
        shards.clear()
        for shard in report.shards:
            shards.add_row(*views.shard_cells(shard), key=shard.name)
        files = self.query_one("#files", DataTable)
        files.clear()
        for item in report.files:
            status = Text(item.status, style=views.STATUS_STYLE.get(item.status, ""))
            files.add_row(Text(inert(item.name)), status, key=item.name)


STATUS_CHOICES = [(s, s) for s in ("all", "changed", "identical", "added", "removed", "retyped")] + [
    ("plan: kept", "plan:candidate"),
    ("plan: rolled back", "plan:base"),
]


class TensorsPane(Vertical):
    BINDINGS = [Binding("s", "next_sort", "Sort")]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tensors: list = []
        self.shown: list = []
        self.from_candidate: set[str] = set()
        self.stale = False  # the plan changed while the tab was hidden
        self.sort = "name"

    def compose(self) -> ComposeResult:
        with Horizontal(id="tensor-filters"):
            yield Input(placeholder="filter: words in the name", id="filter-text")
            yield Select(STATUS_CHOICES, value="all", allow_blank=False, id="filter-status")
            yield Input(placeholder="layers 0-3", id="filter-layers")
        yield DataTable(id="tensor-table", cursor_type="row", zebra_stripes=True)
        yield Static("Hashing both checkpoints...", id="tensor-count")

    def on_mount(self) -> None:
        table = self.query_one("#tensor-table", DataTable)
        for label in views.TENSOR_COLUMNS:
            table.add_column(label, key=label)

    def show(self, report, from_candidate: set[str]) -> None:
        """The report's tensors, with where the plan takes each from; called on every plan
        change. A table of thousands of rows is only rebuilt when it can be seen."""
        changed = report.tensors is not self.tensors or from_candidate != self.from_candidate
        self.tensors, self.from_candidate = report.tensors, from_candidate
        self.stale = self.stale or changed
        if self.stale and self.is_on_screen:
            self.refilter()

    @property
    def is_on_screen(self) -> bool:
        return self.display and self.parent is not None and self.parent.display

    def on_show(self) -> None:
        if self.stale and self.tensors:
            self.refilter()

    def refilter(self) -> None:
        self.stale = False
        text = self.query_one("#filter-text", Input).value
        status = self.query_one("#filter-status", Select).value
        layers = self._layers()
        shown = views.filter_tensors(self.tensors, text, str(status), layers, self.from_candidate)
        self.shown = sorted(shown, key=views.TENSOR_SORTS[self.sort])
        table = self.query_one("#tensor-table", DataTable)
        row = table.cursor_row
        table.clear()
        for t in self.shown:
            table.add_row(*views.tensor_cells(t, self.from_candidate), key=t.name)
        if self.shown:
            table.move_cursor(row=min(row, len(self.shown) - 1))
        count = f"{len(self.shown)} of {len(self.tensors)} tensors, sorted by {self.sort} (s: next sort, ←→ scroll)"
        if self.query_one("#filter-layers", Input).has_class("invalid"):
            count += "; the layer range is not understood (use 0-3,7), so it is ignored"
        self.query_one("#tensor-count", Static).update(count)

    def _layers(self) -> set[int] | None:
        from surgeon.errors import SurgeonError
        from surgeon.model.names import parse_layer_spec

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
        if self.tensors:
            self.refilter()

    def on_select_changed(self, event: Select.Changed) -> None:
        if self.tensors:
            self.refilter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#tensor-table", DataTable).focus()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key in views.TENSOR_SORTS:
            self.sort = key
            self.refilter()

    def action_next_sort(self) -> None:
        names = list(views.TENSOR_SORTS)
        self.sort = names[(names.index(self.sort) + 1) % len(names)]
        self.refilter()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_tensor(str(event.row_key.value))


class PlanPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("Hashing both checkpoints...", id="plan-summary")
        yield Static("", id="plan-eval")
        yield Static("", id="plan-costs")  # one line, cut at the screen's edge: the map has every value
        with Horizontal(id="plan-controls"):
            yield Input(placeholder="layers, e.g. 4-59", id="plan-range")
            yield Button("Roll back", id="plan-roll-back", variant="primary")
            yield Button("Keep", id="plan-restore")
            yield Button("Keep only", id="plan-keep-only")
        yield LayerMap(kl_column=True, id="plan-map")

    def show(self, rows: list[views.LayerRow], summary, candidate_name: str, plan_eval=None, layer_kl=None) -> None:
        """`plan_eval`: this plan's eval summary, None when not evaluated; `layer_kl`: each
        changed layer's KL alone, None before it is measured."""
        self.query_one("#plan-summary", Static).update(views.plan_text(summary, candidate_name))
        self.query_one("#plan-eval", Static).update(views.eval_text(plan_eval))
        self.query_one("#plan-costs", Static).update(views.layer_cost_text(layer_kl))
        self.query_one("#plan-map", LayerMap).show(rows, layer_kl)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter rolls the range back and returns to the map, where single keys work again."""
        if event.input.id == "plan-range":
            self.app.plan_range("roll_back", event.value)
            self.query_one("#plan-map", LayerMap).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        how = {"plan-roll-back": "roll_back", "plan-restore": "restore", "plan-keep-only": "keep_only"}
        if event.button.id in how:
            self.app.plan_range(how[event.button.id], self.query_one("#plan-range", Input).value)


class CanaryPane(Vertical):
    def compose(self) -> ComposeResult:
        with Horizontal(id="canary-controls"):
            yield Button("Run canary (c)", id="canary-run", variant="primary")
            yield Button("Auto plan (a)", id="canary-auto")
            yield Button("Cancel (x)", id="canary-cancel")
        yield Static("No canary run for this plan yet.", id="canary-status")
        yield Static("", id="canary-auto-steps")
        with VerticalScroll(id="canary-scroll"):
            yield Static("", id="canary-result")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "canary-run":
            self.app.action_canary()
        elif event.button.id == "canary-auto":
            self.app.action_auto_plan()
        elif event.button.id == "canary-cancel":
            self.app.action_cancel_job()

    def show(self, plan_label: str, report, auto_steps=(), plan_eval: Text | None = None) -> None:
        """`auto_steps`: the last search's steps as Text, or a canary search's steps;
        `plan_eval`: the plan's eval line, shown under the verdict."""
        from surgeon.recover.render import canary_verdict

        steps = auto_steps if isinstance(auto_steps, Text) else views.auto_steps_text(auto_steps)
        self.query_one("#canary-auto-steps", Static).update(steps)
        status = self.query_one("#canary-status", Static)
        result = self.query_one("#canary-result", Static)
        if report is None:
            line = Text(f"Plan {plan_label}: no canary run yet. c: run it in memory; a: auto plan search.")
            result.update("")
        else:
            line = Text.assemble(f"Plan {plan_label}: ", canary_verdict(report))
            result.update(views.canary_blocks(report))
        status.update(line.append("\n").append_text(plan_eval) if plan_eval is not None else line)


IMPORTANCE_CHOICES = [(name, name) for name in ("recon", "norm", "loo-nll")]
HEAL_CHOICES = [("lstsq", "lstsq"), ("none", "none")]


class PrunePane(VerticalScroll):
    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row"):
            yield Label("fraction", classes="form-label")
            yield Input("0.125", id="prune-frac")
            yield Label("layers", classes="form-label")
            yield Input("all", id="prune-layers")
        with Horizontal(classes="form-row"):
            yield Label("importance", classes="form-label")
            yield Select(IMPORTANCE_CHOICES, value="recon", allow_blank=False, id="prune-importance")
            yield Label("heal", classes="form-label")
            yield Select(HEAL_CHOICES, value="lstsq", allow_blank=False, id="prune-heal")
        with Horizontal(classes="form-row"):
            yield Label("output", classes="form-label")
            yield Input("", placeholder="empty: a new <base>-pruned folder here", id="prune-output")
            yield Button("Prune base", id="prune-run", variant="primary")
        yield DataTable(id="prune-progress", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#prune-progress", DataTable)
        for label in ("layer", "phase", "heads pruned", "rel residual", "seconds"):
            table.add_column(label, key=label)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "prune-run":
            self.app.action_prune()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field starts the prune; keys then go to the progress table, not the box."""
        self.query_one("#prune-progress", DataTable).focus()
        self.app.action_prune()

    def form(self) -> dict:
        return {
            "fraction": self.query_one("#prune-frac", Input).value.strip(),
            "layers": self.query_one("#prune-layers", Input).value.strip() or "all",
            "importance": str(self.query_one("#prune-importance", Select).value),
            "heal": str(self.query_one("#prune-heal", Select).value),
            "output": self.query_one("#prune-output", Input).value.strip(),
        }

    def reset_progress(self) -> None:
        self.query_one("#prune-progress", DataTable).clear()

    def phase(self, layer: int, phase: str) -> None:
        table = self.query_one("#prune-progress", DataTable)
        key = str(layer)
        if key not in table.rows:
            table.add_row(str(layer), phase, "", "", "", key=key)
            table.move_cursor(row=table.row_count - 1)
        else:
            table.update_cell(key, "phase", phase)

    def layer_done(self, result) -> None:
        table = self.query_one("#prune-progress", DataTable)
        key = str(result.layer)
        if key not in table.rows:
            self.phase(result.layer, "done")
        table.update_cell(key, "phase", "pruned" if result.pruned else "forward only")
        heads = ",".join(map(str, result.pruned_heads)) if result.pruned else "-"
        table.update_cell(key, "heads pruned", heads or "none")
        residual = (result.refit or {}).get("rel_residual")
        table.update_cell(key, "rel residual", "-" if residual is None else f"{residual:.4f}")
        table.update_cell(key, "seconds", f"{result.seconds:.2f}")
