"""The app's five tabs, in one table: it drives the tab strip, the number keys, where the keys
go on each tab, the command palette's tab entries and the help screen's key list."""

from __future__ import annotations

from dataclasses import dataclass

from textual.widget import Widget

from .panes import CanaryPane, OverviewPane, PlanPane, PrunePane, TensorsPane


@dataclass(frozen=True)
class Tab:
    id: str
    title: str  # on the tab strip, after the key: "1 Overview"
    key: str  # shows the tab
    pane: type[Widget]
    focus: str  # the widget that gets the keys when the tab shows: space on a map just works
    type_here: str | None  # the text box `/` jumps to (the Tensors tab's filter), None if none
    search: bool  # else `/` searches the tab's table, its `focus` (surgeon.tui.search)
    command: str  # the command palette's entry
    help: str  # the palette's line under it

    @property
    def label(self) -> str:
        return f"{self.key} {self.title}"


TABS = (
    Tab(
        id="overview",
        title="Overview",
        key="1",
        pane=OverviewPane,
        focus="#layer-map",
        type_here=None,
        search=True,
        command="Overview",
        help="Layer map, summary and shard verdicts",
    ),
    Tab(
        id="tensors",
        title="Tensors",
        key="2",
        pane=TensorsPane,
        focus="#tensor-table",
        type_here="#filter-text",
        search=False,
        command="Tensors",
        help="Every tensor: filter, sort, open one",
    ),
    Tab(
        id="plan",
        title="Plan",
        key="3",
        pane=PlanPane,
        focus="#plan-map",
        type_here=None,
        search=True,
        command="Rollback plan",
        help="Choose the layers to keep",
    ),
    Tab(
        id="canary",
        title="Canary",
        key="4",
        pane=CanaryPane,
        focus="#canary-scroll",
        type_here=None,
        search=False,
        command="Canary tab",
        help="Results of the canary per plan",
    ),
    Tab(
        id="prune",
        title="Prune",
        key="5",
        pane=PrunePane,
        focus="#prune-progress",
        type_here=None,
        search=True,
        command="Prune tab",
        help="Prune the base into a new candidate",
    ),
)
TAB = {tab.id: tab for tab in TABS}
