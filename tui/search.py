"""`/` on a tab with a table: a search line under the tabs that moves the table's cursor to
the next row matching what is typed, as `/` does in less, vim and k9s. The Tensors tab's
`/` goes to its filter instead: at 20k tensors a filter is the search that helps.

A query of digits matches the first column, the layer, exactly ("12" is layer 12, not 112
nor a row with head #12 zeroed); other text matches any cell containing it, ignoring case
("#12" finds head 12). Enter keeps the row found,
escape goes back to where the cursor was; `/` then enter alone finds the next match of the
last query, as in less.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable, Input


def row_matches(cells: list, query: str) -> bool:
    words = [cell.plain if isinstance(cell, Text) else str(cell) for cell in cells]
    if query.isdigit():  # every searched table's first column is the layer
        return bool(words) and words[0].strip() == query
    lowered = query.lower()
    return any(lowered in word.lower() for word in words)


def find_row(table: DataTable, query: str, start: int, step: int = 1) -> int | None:
    """The first row from `start` on (wrapping round) whose cells match `query`, going down
    (`step` 1) or up (-1); None when no row does."""
    count = table.row_count
    if not query or not count:
        return None
    for offset in range(count):
        row = (start + step * offset) % count
        if row_matches(table.get_row_at(row), query):
            return row
    return None


class SearchBar(Input):
    """The search line. The app opens it on a table (`open`); it moves that table's cursor
    as the query changes, and closes on enter (keeping the row) or escape (going back)."""

    DEFAULT_CSS = """
    SearchBar, SearchBar:focus { display: none; height: 1; border: none; padding: 0 1; }
    SearchBar.no-match, SearchBar.no-match:focus { background: $error 40%; }
    """
    BINDINGS = [
        Binding("escape", "close(False)", "Back", show=False),
        Binding("down", "next(1)", "Next match", show=False),
        Binding("up", "next(-1)", "Previous match", show=False),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(placeholder="search: a layer number or words; enter keeps, escape goes back", **kwargs)
        self.table: DataTable | None = None
        self.origin = 0  # the cursor row before the search: escape returns to it
        self.last = ""  # the last query kept: `/` then enter alone finds its next match

    def open(self, table: DataTable) -> None:
        self.table, self.origin = table, table.cursor_row
        self.value = ""
        self.remove_class("no-match")
        self.display = True
        self.screen.set_focus(self)  # now, not after a refresh: the next key typed belongs here

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.table is not None and self.value:
            self._go(find_row(self.table, self.value, self.origin + 1))  # after the cursor, as in vim

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if not self.value and self.last and self.table is not None:  # `/` enter: the next match
            self._go(find_row(self.table, self.last, self.origin + 1))
        if self.has_class("no-match"):
            self.notify(f"No row matches {self.value or self.last!r}", severity="warning", timeout=3, markup=False)
        self.last = self.value or self.last
        self.action_close(True)

    def on_blur(self) -> None:
        """Focus gone elsewhere (a click, a dialog): the search ends where it stands."""
        if self.display:
            self.table = None  # keep its row, and leave the focus where it went
            self.display = False

    def action_next(self, step: int) -> None:
        query = self.value or self.last
        if self.table is not None and query:
            self._go(find_row(self.table, query, self.table.cursor_row + step, step))

    def action_close(self, keep: bool) -> None:
        table, self.table = self.table, None
        self.display = False
        if table is not None:
            if not keep:
                table.move_cursor(row=self.origin)
            self.screen.set_focus(table)  # now: a key typed right after enter goes to the table

    def _go(self, row: int | None) -> None:
        """To the row found; when none matches, back where the search started (as vim's
        incsearch does), not left on a match of what was typed so far."""
        self.set_class(row is None, "no-match")
        if self.table is not None:
            self.table.move_cursor(row=self.origin if row is None else row)
